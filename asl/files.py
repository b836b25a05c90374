"""One way to write a file: :func:`atomic_write`.

Every file the package writes (checkpoints, configs, metrics, figures, run records) goes
through it, so a crash, a full disk or Ctrl-C mid-write never leaves a truncated file under
the final name: the bytes go to a temporary file in the same folder, are flushed to disk, and
the temporary file is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

from .errors import OutputError

__all__ = ["atomic_write", "output_error"]

# Errors that say the output cannot take the file (not a bug): one error line, no traceback.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own is 0600


def atomic_write(
    path: Union[str, os.PathLike],
    data: Union[bytes, str, None] = None,
    *,
    writer: Optional[Callable[[BinaryIO], None]] = None,
    encoding: str = "utf-8",
) -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) or whatever ``writer(file)`` writes to ``path``.

    Args:
        path: the destination; its folder must exist.
        data: the content; exactly one of ``data`` and ``writer`` is given.
        writer: called with the open binary file (``torch.save(obj, f)``, ``np.save(f, a)``,
            ``fig.savefig(f, format="png")``).
        encoding: for text ``data``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if (data is None) == (writer is None):
        raise TypeError("atomic_write takes data or writer, not both or neither")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from None
    f = None
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save turns the file's OSError into a RuntimeError: the recorded one says what happened
        cause = f.error if f is not None and f.error is not None else e
        if isinstance(cause, OSError) and cause.errno in _OUTPUT_ERRNOS:
            raise output_error(path, cause) from None
        raise
    return path


def output_error(path: Union[str, os.PathLike], e: OSError) -> OutputError:
    """The one-line error for an output that cannot be written (full disk, read-only folder)."""
    return OutputError(f"cannot write {path}: {e.strerror or e}")


class _Recording:
    """A binary file that remembers the OSError its ``write`` raised (``torch.save`` hides it)."""

    def __init__(self, f: BinaryIO):
        self._f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self._f.write(b)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)
