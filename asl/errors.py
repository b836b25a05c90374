"""User-facing errors: the command lines print them as one ``error: ...`` line, exit 2."""


class ASLError(Exception):
    """An error in the user's input (file, flag, config, data, checkpoint), not a bug."""


class ConfigError(ASLError):
    """A bad config file, key, value or flag."""


class DataError(ASLError):
    """A missing or malformed dataset, annotation or image."""


class CheckpointError(ASLError):
    """A missing, unreadable, unsafe or mismatching checkpoint."""


class OutputError(ASLError):
    """An output that cannot be written: a full disk, a read-only or unwritable folder."""


class Interrupted(KeyboardInterrupt):
    """A second SIGTERM / SIGINT: stop now; the command exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum, self.signame = signum, signal.Signals(signum).name
