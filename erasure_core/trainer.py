"""The erasure trainer's public names, re-exported from the `erasure_core.training` package.

This module stays until the restructuring (issue 13) moves its callers (nodes/, the CLI, bench/, demo/) to
`erasure_core.training`; new code should import from there.
"""

from .training import (  # noqa: F401
    CHECKPOINT_FORMAT,
    LAYER_GROUPS,
    METHODS,
    PRECISIONS,
    RESUMABLE_CHANGES,
    EraseConfig,
    EraseResult,
    erase,
    filter_retain_prompts,
    parse_layers,
    read_checkpoint,
    select_trainable_parameters,
)
