"""User-facing errors: the command lines print them as one ``error: ...`` line, exit 2."""


class ASLError(Exception):
    """An error in the user's input (file, flag, config, data, checkpoint), not a bug."""


class ConfigError(ASLError):
    """A bad config file, key, value or flag."""


class DataError(ASLError):
    """A missing or malformed dataset, annotation or image."""


class CheckpointError(ASLError):
    """A missing, unreadable, unsafe or mismatching checkpoint."""
