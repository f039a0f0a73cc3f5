"""User-facing errors. CLIs print these as one line (file or argument at fault + what to do); anything else is a
bug and keeps its traceback."""


class VistokError(Exception):
    """Base of errors caused by the user's input rather than by vistok."""


class ConfigError(VistokError, ValueError):
    """A config file, override, registry name or option is wrong."""


class CheckpointError(VistokError, RuntimeError):
    """A checkpoint folder is missing, unreadable, or does not match the model it is loaded into."""


class DataError(VistokError, ValueError):
    """A data folder or file cannot be used (empty, missing, unreadable)."""
