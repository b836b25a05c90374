"""One way to write a file: :func:`atomic_write`.

Every file the package writes (checkpoints, configs, metrics, figures, run records) goes
through it, so a crash, a full disk or Ctrl-C mid-write never leaves a truncated file under
the final name: the bytes go to a temporary file in the same folder, are flushed to disk, and
the temporary file is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

__all__ = ["atomic_write"]


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


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, str, None] = None, *,
                 writer: Optional[Callable[[BinaryIO], None]] = None, encoding: str = "utf-8") -> Path:
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
