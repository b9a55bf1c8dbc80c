"""`python -m erasure_core ...`: the command line, in erasure_core/cli/."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
