"""Where commands write: the one owner of every output folder and output file.

Each rule lives here once, and every command that writes (training, ``validate.py --output``,
``infer.py --tags-out / --scores-csv / --save-image``, ``export.py``, ``asl-data inspect`` and
``convert``) goes through it:

- **Apart** (:func:`check_apart`): no output is one of the command's inputs, lies inside a folder
  it reads (the dataset's folder, a folder of pictures), or holds such a folder, whatever
  ``--overwrite`` says. The dataset's folder is the folder that holds its label file and its
  pictures (:func:`dataset_folder`), also when the data are named by their label file.
- **Whose folder** (:func:`check_folder`): a folder belongs to a command when it holds that
  command's lock, or only files that command writes with the content it writes (a checkpoint
  that loads, a ``metrics.jsonl`` that parses). Anything else, a user's own ``config.yaml``
  above all, is never replaced: ``--overwrite`` covers only files the same command wrote before.
- **Whose file** (:func:`check_output_file`): a single output file is replaced with
  ``--overwrite`` only when it holds what the command writes (an ONNX model, a scores CSV).
- **No links followed** (:func:`asl.files.open_regular`): a file opened for writing outside
  :func:`asl.files.atomic_write` (the lock) is opened without following a symbolic link and must
  be a regular file.
- **Claim** (:func:`claim`): check, create, lock, check again, remove stale temporaries, release;
  a folder the claim created is removed again when the command fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

from .errors import ConfigError
from .files import PROBE, open_regular, output_error, remove_stale_temporaries, removed_on_error, writable_dir
from .outputs import (
    BY_COMMAND,
    SINGLE_FILES,
    TRAINING,
    Product,
    head_bytes,
)

log = logging.getLogger(__name__)

__all__ = [
    "RUN_LOCK",
    "Source",
    "claim",
    "check_apart",
    "check_folder",
    "check_output_file",
    "config_sources",
    "dataset_folder",
    "RunLock",
]

RUN_LOCK = ".asl-run.lock"
# Names that say a folder is a dataset, not a command's output.
DATASET_MARKERS = (
    "labels.csv",
    "classes.txt",
    "_classes.csv",
    "metadata.jsonl",
    "metadata.csv",
    "demo.json",
    "annotations",
    "images",
    "JPEGImages",
    "train2014",
    "val2014",
    "train2017",
    "val2017",
)
PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- inputs and outputs apart


@dataclass(frozen=True)
class Source:
    """Something a command reads.

    Attributes:
        what: how messages name it (``the dataset folder``, ``--model-path``).
        path: the file or folder.
        folder: a folder read from: nothing may be written inside it (else a single file).
        data: the dataset (messages say that a run never writes into its data).
    """

    what: str
    path: Path
    folder: bool = False
    data: bool = False


def dataset_folder(data_root: PathLike) -> Path:
    """The folder that holds a dataset's label file and its pictures: ``data_root`` itself, or the
    folder of the label file it names (``D/labels.csv``, a COCO JSON, a Label Studio export)."""
    root = Path(data_root).expanduser()
    return root.parent if root.is_file() or (not root.exists() and root.suffix) else root


def dataset_source(data_root: Optional[PathLike]) -> List[Source]:
    if not data_root:
        return []
    folder = dataset_folder(data_root)
    return [Source(f"the dataset folder {folder}", folder, folder=True, data=True)]


def file_sources(**named: Optional[PathLike]) -> List[Source]:
    """Single input files by their flag (``model_path="x.pth"`` -> ``--model-path x.pth``)."""
    return [Source(f"--{k.replace('_', '-')} {v}", Path(v)) for k, v in named.items() if v]


def config_sources(cfg) -> List[Source]:
    """What a command configured by ``cfg`` (an :class:`asl.config.Config`) reads: the dataset's
    folder, image folders and annotation files named apart from it, the class list, the weights
    it starts from or evaluates. A resumed run's ``last.pth`` is the run's own, not an input."""
    folders = [
        Source(f"--{k.replace('_', '-')} {v}", Path(v), folder=True, data=True)
        for k, v in (("image_dir", cfg.image_dir), ("val_image_dir", cfg.val_image_dir))
        if v
    ]
    return [
        *dataset_source(cfg.data_root),
        *folders,
        *file_sources(
            ann_file=cfg.ann_file,
            val_ann_file=cfg.val_ann_file,
            class_names=cfg.class_names,
            model_path=cfg.model_path,
            init_checkpoint=cfg.init_checkpoint,
            prior_file=cfg.prior_file,
        ),
    ]


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_apart(
    flag: str, target: PathLike, sources: Sequence[Source], *, folder: bool = False, files: Iterable[PathLike] = ()
) -> None:
    """An output (``target``; with ``folder``, a folder the command writes ``files`` into) is none of
    ``sources``, does not lie inside a folder source, and (a folder) holds no folder source.

    Raises:
        ConfigError: the first clash, naming both paths.
    """
    t = _real(target)
    written = {_real(f) for f in files}
    real = [(s, _real(s.path)) for s in sources]

    def relation(s: Source, r: Path) -> Optional[str]:
        if s.folder and r in t.parents:
            return "is inside"
        if folder and s.folder and t in r.parents:
            return "is a folder holding"
        if not s.folder and r in written:
            return f"would write {r.name} over"
        return None

    # the output named as an input is said first: it is the clash the user sees
    clashes = [(s, "is") for s, r in real if t == r] + [(s, rel) for s, r in real if (rel := relation(s, r))]
    if clashes:
        s, rel = clashes[0]
        why = "a run never writes into its data" if s.data else "an output never replaces or lands among its inputs"
        exists = " already exists and" if rel == "is" and t.exists() else ""
        raise ConfigError(f"{flag} {target}{exists} {rel} {s.what}: {why}, --overwrite or not; choose another {flag}")


# --------------------------------------------------------------------------- whose folder, whose file


def _is_own_temporary(name: str, product: "Product") -> bool:
    """A file every command may find in its folder: its lock, a writability probe, the temporary
    file of an interrupted atomic write of one of its files (``.<name>.<random>.tmp``)."""
    if name == RUN_LOCK or name.startswith(PROBE):
        return True
    return name.endswith(".tmp") and (product.any_file or any(name.startswith(f".{f}.") for f in product.files))


def lock_owner(out: Path) -> Optional[str]:
    """The command whose lock ``out`` holds (``train`` for a lock of an older version, which
    records only the pid), or None.

    Raises:
        ConfigError: the lock is a symbolic link or not a regular file (it is never followed).
    """
    path = out / RUN_LOCK
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ConfigError(f"{path} is {kind}, not a run's lock: it is never followed or written; remove it")
    lines = head_bytes(path, 256).decode("ascii", "replace").split()
    return lines[1] if len(lines) > 1 and lines[1] in BY_COMMAND else "train"


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_folder(
    out: Path, product: Product, overwrite: bool, resume: Optional[PathLike] = None, flag: str = "--output"
) -> None:
    """``out`` is new, empty, or ``product``'s own folder (replaced only with ``overwrite``), or
    the folder of the run ``resume`` continues.

    Raises:
        ConfigError: a file where the folder should be; a folder of another command; files that
            command did not write (named), a dataset above all; a folder of the same command
            without ``overwrite``.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file, not a folder")
    owner = lock_owner(out)
    held = sorted(p.name for p in out.iterdir() if not _is_own_temporary(p.name, product))
    if resume is not None and _real(resume).parent == _real(out):
        return  # the run it continues
    if not held:
        return
    if owner is not None and owner != product.command:
        other = BY_COMMAND[owner]
        raise ConfigError(
            f"{out} holds {other.noun}'s files ({_shown(held)}), not {product.noun}'s: choose a new {flag} "
            f"(--overwrite replaces only {product.noun}'s own files)"
        )

    if not product.reuse:
        raise ConfigError(
            f"{flag} {out} exists and is not an empty folder ({_shown(held)}): {product.writer} writes into a "
            f"new folder"
        )

    def ours(name: str) -> bool:
        if owner == product.command and (product.any_file or name in product.files):
            return True
        test = product.files.get(name)
        return test is not None and test(out / name)

    foreign = [n for n in held if not ours(n)]
    if foreign:
        kind = "a dataset" if any(n in DATASET_MARKERS for n in held) else f"files no {product.writer} wrote"
        beside = [n for n in held if n not in foreign]
        raise ConfigError(
            f"{out} holds {kind} ({_shown(foreign)})"
            + (f" beside {product.noun}'s ({_shown(beside)})" if beside else "")
            + f", not {product.noun}'s output: choose a new {flag} (--overwrite replaces only {product.noun}'s "
            f"own files)"
        )
    if not overwrite:
        hint = f", resume it with --resume {out / 'last.pth'}" if product is TRAINING and "last.pth" in held else ""
        raise ConfigError(
            f"{out} already holds {product.noun} ({_shown(held)}); choose a new {flag}{hint}, or pass --overwrite "
            f"to replace it"
        )


def check_output_file(path: PathLike, flag: str, overwrite: bool, kind: str) -> Path:
    """A single output file: new, or (with ``overwrite``) one holding what this command writes
    (``SINGLE_FILES[kind]``), in a folder that takes files.

    Raises:
        ConfigError: a folder or a link in its place, an existing file without ``overwrite``, a
            file that is not this command's output, a folder that takes no file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder, not a file")
    if path.is_symlink():
        raise ConfigError(f"{flag} {path} is a symbolic link: an output never follows one; choose another path")
    if path.exists():
        if not overwrite:
            raise ConfigError(f"{flag} {path} already exists; choose another path (or pass --overwrite to replace it)")
        if not SINGLE_FILES[kind](path):
            raise ConfigError(
                f"{flag} {path} already exists and is not a file this command wrote: --overwrite replaces "
                f"only those; choose another path"
            )
    writable_dir(path.parent if str(path.parent) else Path("."), flag=f"the folder of {flag}")
    return path


# --------------------------------------------------------------------------- folders, the lock


class RunLock:
    """An exclusive lock on a command's output folder (``.asl-run.lock``, ``flock``), held while
    it writes: a second command into the same folder is refused, and the lock goes with its
    process, so a killed run leaves no stale lock behind. The file records the pid and the
    command, and so marks the folder as that command's."""

    def __init__(self, out: Path, command: str = "train"):
        self.path = out / RUN_LOCK
        self.fd: Optional[int] = open_regular(self.path, os.O_RDWR | os.O_CREAT, "a run's lock")
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): no lock there; the folder checks still refuse a used folder
            pass
        except OSError:
            other = os.pread(self.fd, 64, 0).decode("ascii", "replace").split()
            os.close(self.fd)
            self.fd = None
            raise ConfigError(
                f"another run is writing into {out}{f' (pid {other[0]})' if other else ''}: wait for it "
                f"to end, or choose another --output"
            ) from None
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n{command}\n".encode("ascii"), 0)
        except OSError as e:  # a full disk: one line naming the folder, not a bare errno
            self.release()
            raise output_error(self.path, e) from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


@contextlib.contextmanager
def claim(
    out: PathLike,
    product: Product,
    *,
    overwrite: bool = False,
    sources: Sequence[Source] = (),
    resume: Optional[PathLike] = None,
    is_main: bool = True,
    flag: str = "--output",
    dry_run: bool = False,
) -> Iterator[Path]:
    """Own ``out`` for the block: check it (:func:`check_apart`, :func:`check_folder`), create it,
    lock it, check it again (a command that finished between), remove the temporaries an
    interrupted write of ``product`` left, and release the lock at the end. Other ranks than the
    main one (``is_main``) check but neither create nor lock. A folder this claim created is
    removed again, when empty, if the block raises (``dry_run``: always).

    Yields:
        ``out`` as a Path.
    """
    out = Path(out)
    check_apart(flag, out, sources, folder=True, files=[out / n for n in product.files])
    check_folder(out, product, overwrite, resume, flag)
    with removed_on_error(out, always=dry_run, leftover=RUN_LOCK):
        if not is_main:
            yield out
            return
        writable_dir(out, flag)
        lock = RunLock(out, product.command)
        try:
            check_folder(out, product, overwrite, resume, flag)
            for tmp in remove_stale_temporaries(out, product.files):
                log.info("removed %s, left by an interrupted write", tmp)
            yield out
        finally:
            lock.release()
