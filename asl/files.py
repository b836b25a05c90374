"""One way to write a file, :func:`atomic_write`, and the file-system steps around it: a folder
proved writable, a file opened without following links, the temporaries of a killed write
removed, a folder a failed command created removed again.

Every file the package writes (checkpoints, configs, metrics, figures, run records) goes
through it, so a crash, a full disk or Ctrl-C mid-write never leaves a truncated file under
the final name: the bytes go to a temporary file in the same folder, are flushed to disk, and
the temporary file is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Union

from .errors import ConfigError, OutputError

PROBE = ".write-test-"  # prefix of the temporary file that proves a folder writable
PathLike = Union[str, os.PathLike]

__all__ = [
    "atomic_write",
    "output_error",
    "writable_dir",
    "open_regular",
    "remove_stale_temporaries",
    "removed_on_error",
]

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


def writable_dir(path: Path, flag: str = "--output") -> Path:
    """Create ``path`` (and parents) and prove it takes a file; else one-line ConfigError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE, dir=path)
        os.close(fd)
        os.unlink(probe)  # the probe is this call's own file
    except OSError as e:
        raise ConfigError(f"cannot write into {flag} {path}: {e.strerror or e}") from None
    return path


def open_regular(path: Path, flags: int, what: str) -> int:
    """``os.open`` for writing outside :func:`asl.files.atomic_write`: a symbolic link is never
    followed and only a regular file is kept open (a FIFO or a device is refused).

    Raises:
        ConfigError: a link, not a regular file, or an OSError (``what`` names the file's role).
    """
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise ConfigError(f"{path} is a symbolic link: {what} is never followed or written; remove it") from None
        raise ConfigError(f"cannot write {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file: {what} is never written there; remove it")
    return fd


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> List[Path]:
    """Remove the temporary files :func:`asl.files.atomic_write` left for ``names`` in ``folder``
    when a process was killed mid-write (``.<name>.<random>.tmp``); nothing else is touched.

    Returns:
        the paths removed.
    """
    folder, removed = Path(folder), []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed.append(tmp)
    return removed


def remove_if_empty(out: Path, leftover: Optional[str] = None) -> None:
    """Remove a folder a failed command created, when nothing is in it but (``leftover``) the one
    file of that name the command itself made there (its lock)."""
    try:
        if leftover and (out / leftover).is_file() and [p.name for p in out.iterdir()] == [leftover]:
            (out / leftover).unlink()
        out.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass


@contextlib.contextmanager
def removed_on_error(*paths: PathLike, always: bool = False, leftover: Optional[str] = None) -> Iterator[None]:
    """Folders this block creates (``paths`` and their missing parents) are removed again, when
    still empty (but for ``leftover``, see :func:`remove_if_empty`), if the block raises
    (``always``: also when it ends well, as a dry run): a command that fails leaves no empty output
    folder behind."""
    missing = []
    for path in paths:
        p = Path(path).absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent

    def clean():
        for p in sorted(set(missing), key=lambda q: len(q.parts), reverse=True):
            remove_if_empty(p, leftover)

    try:
        yield
    except BaseException:
        clean()
        raise
    if always:
        clean()
