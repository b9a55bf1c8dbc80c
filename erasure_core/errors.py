"""User-facing errors. Each message says what was wrong and what to do; the CLI prints it and exits 2."""


class ErasureError(Exception):
    """Base class of every error a user can cause (bad file, wrong model family, bad option...)."""


class ModelFormatError(ErasureError):
    """A model or encoder file is not what it must be (wrong family, missing or misshaped keys...)."""


class ErasureCancelled(ErasureError):
    """Training was cancelled; `checkpoint` names the resumable checkpoint that was written."""

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class ErasureDiverged(ErasureError):
    """The loss became NaN/inf; `checkpoint` names the last good checkpoint, if any."""

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint
