"""``--dataset shards``: the tars ``asl-data shard`` writes (:mod:`asl.data.shard`), streamed.

A folder holding ``_info.json`` (or a glob of its tars, or the ``_info.json`` itself) is read as an
iterable dataset. Each epoch lays the split's shards end to end (in a seeded shuffled order when
training, in written order when evaluating) and cuts that sequence into one contiguous range per
rank: rank ``r`` of ``W`` takes ``N // W`` samples, plus one for ``r < N % W``; a rank with one
fewer repeats its first sample, so every rank takes as many steps (evaluation drops the repeat, as
:class:`asl.distributed.ShardSampler` does). Within a rank:

- training: each loader worker reads a contiguous run of whole batches and shuffles it through a
  buffer of ``--shuffle-buffer`` samples, seeded by (seed, epoch, rank, worker): the same seed, rank
  count and worker count give the same batches;
- evaluation: batch ``j`` goes to worker ``j % K``, so the loader yields the rank's samples in order
  and ``paths`` names each score's sample.

The tars are read with the standard library's ``tarfile`` (sequentially; a member not needed is
skipped with a seek on a local file). A sample missing its picture or its labels, one that does not
decode, or labels of another class list are skipped, named and counted against the bad-image
limits; the next readable sample takes its place so the counts hold. A tar that ends early is one
error naming its path and the byte where it broke.

Resuming from a mid-epoch checkpoint skips the first samples of the rank's sequence already seen
(before the shuffle buffer), so the epoch has the right number of steps left; with a shuffle buffer
of B, up to B of the samples it then sees differ from those the interrupted run would have seen.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from .base import DEFAULT_READ, ReadOptions

log = logging.getLogger(__name__)

__all__ = ["ShardDataset", "create_shards", "is_shards", "read_info"]

INFO = "_info.json"


def is_shards(root: Path) -> bool:
    """What ``--dataset auto`` tells shards by: an ``_info.json`` (the folder's, or the file itself)."""
    return (root.is_dir() and (root / INFO).is_file()) or (root.is_file() and root.name == INFO)


def _folder_and_files(spec: str) -> Tuple[Path, Optional[List[Path]]]:
    """The shard folder and, for a glob of tars, the tars named."""
    p = Path(spec)
    if p.is_dir():
        return p, None
    if p.name == INFO and p.is_file():
        return p.parent, None
    files = sorted(Path(f) for f in glob.glob(os.path.expanduser(spec)))
    if not files:
        raise DataError(f"shards: nothing matches {spec}")
    parents = {f.parent for f in files}
    if len(parents) != 1:
        raise DataError(f"shards: {spec} names tars in {len(parents)} folders; one set of shards is one folder")
    return parents.pop(), files


def read_info(folder: Path) -> Dict[str, Any]:
    """The folder's ``_info.json``, checked: complete, its class list the folder's ``classes.txt``."""
    from ..classes import classes_sha256, read_class_names

    path = folder / INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no {INFO} (write shards with asl-data shard SRC OUT)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a shards description ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise DataError(f"{path}: not a shards description (no 'splits')")
    if not info.get("complete", False):
        raise DataError(
            f"{path}: the shards were not all written (asl-data shard was stopped); write them again into a new folder"
        )
    names = read_class_names(str(folder / "classes.txt"))
    if info.get("classes_sha256") and classes_sha256(names) != info["classes_sha256"]:
        raise DataError(f"{folder / 'classes.txt'}: not the class list the shards were written with")
    info["class_names"] = names
    return info


class _LabelCounts:
    """What a summary needs of a split's labels, from ``_info.json`` (the labels are in the tars)."""

    def __init__(self, positives: Sequence[int], labelled: Sequence[int], n: int, unlisted: float):
        self._pos, self._lab = np.asarray(positives, np.int64), np.asarray(labelled, np.int64)
        self.n, self.unlisted, self.num_classes = n, unlisted, len(self._pos)

    def __len__(self) -> int:
        return self.n

    def positives(self) -> np.ndarray:
        return self._pos

    def labelled(self) -> np.ndarray:
        return self._lab

    def unknown(self) -> int:
        return int(self.n * self.num_classes - self._lab.sum())


class _RowNames(Sequence[str]):
    """The sample behind each evaluation row (rows gathered from the ranks: row ``i * W + r`` is
    rank ``r``'s ``i``-th), as ``SHARD.tar:KEY``."""

    def __init__(self, ds: "ShardDataset"):
        self.ds = ds

    def __len__(self) -> int:
        return self.ds.num_samples

    def __getitem__(self, q):
        if isinstance(q, slice):
            return [self[k] for k in range(*q.indices(len(self)))]
        ds = self.ds
        if ds.source_index is not None:  # rows in the source's order (asl.engine.evaluate)
            if ds._by_place is None:
                ds._by_place = np.argsort(ds.source_index)
            return ds.sample_name(int(ds._by_place[int(q)]))
        i, r = divmod(int(q), ds.world_size)
        lo, hi = ds.rank_range(r)
        return ds.sample_name(lo + i if lo + i < hi else lo)


class ShardDataset(torch.utils.data.IterableDataset):
    """One split of a shards folder, streamed (module docstring).

    Args:
        root: the folder, its ``_info.json``, or a glob of its tars.
        split: a split of ``_info.json``; ``train`` / ``eval`` also name its training / evaluation split.
        transform: applied to each decoded picture.
        read: the bad-image limits and the decoder's draft size.
        train: shuffle (by shard, then through the buffer) and split whole batches over workers.
        seed, shuffle_buffer: the shuffle's.
        rank, world_size: this process's share (default: the process group's, else 0 of 1).
    """

    def __init__(
        self,
        root: str,
        split: str,
        transform: Optional[Callable] = None,
        read: ReadOptions = DEFAULT_READ,
        train: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        folder, named = _folder_and_files(root)
        info = read_info(folder)
        split = {"train": info.get("train_split", "train"), "eval": info.get("eval_split", "val")}.get(split, split)
        if split not in info["splits"]:
            raise DataError(f"{folder}: no split {split!r} in its shards (it has {', '.join(info['splits'])})")
        entry = info["splits"][split]
        self.files = [folder / f for f in entry["filenames"]]
        self.lengths = np.asarray(entry["shard_lengths"], dtype=np.int64)
        if len(self.files) != len(self.lengths) or int(self.lengths.sum()) != int(entry["num_samples"]):
            raise DataError(f"{folder / INFO}: split {split}'s counts disagree with its shard list")
        if named is not None and set(named) != set(self.files):
            extra = sorted(set(map(str, named)) ^ set(map(str, self.files)))
            raise DataError(f"shards: {root} names other tars than {split}'s in {INFO} ({extra[0]}, ...)")
        self._check_tars()
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.num_samples = int(self.offsets[-1])
        self.class_names: List[str] = info["class_names"]
        self.class_aliases: Dict[str, List[str]] = {}
        self.unlisted = float(info.get("unlisted", 0))
        self.labels = _LabelCounts(
            entry.get("positives", [0] * len(self.class_names)),
            entry.get("labelled", [0] * len(self.class_names)),
            self.num_samples,
            self.unlisted,
        )
        self.name = f"shards {folder} [{split}]"
        self.transform, self.train, self.seed, self.shuffle_buffer = transform, train, seed, shuffle_buffer
        self.draft_size = read.draft_size
        self.tolerated = max(int(read.max_bad_images), int(read.max_bad_fraction * self.num_samples))
        if rank is None or world_size is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.workers = 1, 0
        # shared with the loader's workers (persistent ones too): epoch, samples already seen, bad flags
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(self.num_samples, dtype=torch.uint8).share_memory_()
        self.source_index = self._source_index(folder, entry)
        self._by_place: Optional[np.ndarray] = None
        self.paths = _RowNames(self)
        if len(self.files) < world_size:
            log.warning(
                "warning: %s has %d shards for %d processes: each reads parts of shards (every sample still once)",
                self.name,
                len(self.files),
                world_size,
            )

    def _source_index(self, folder: Path, entry: Dict[str, Any]) -> Optional[np.ndarray]:
        """Each sample's place in the split the shards were written from (None when not recorded)."""
        name = entry.get("source_order")
        if not name:
            return None
        try:
            order = np.load(folder / name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{folder / name}: not the shards' sample order ({e})") from None
        if order.shape != (self.num_samples,) or len(np.unique(order)) != self.num_samples:
            raise DataError(f"{folder / name}: not an order of the split's {self.num_samples} samples")
        return np.argsort(np.argsort(order, kind="stable"), kind="stable")  # ranks: places 0..N-1

    def evaluation_order(self) -> Optional[np.ndarray]:
        """(N,) where each gathered evaluation row belongs in the source's order (row ``i * W + r``:
        rank ``r``'s ``i``-th sample), or None to keep the rows as they are."""
        if self.source_index is None:
            return None
        q = np.arange(self.num_samples)
        i, r = q // self.world_size, q % self.world_size
        lo = np.array([self.rank_range(k)[0] for k in range(self.world_size)])
        return self.source_index[lo[r] + i]

    def _check_tars(self) -> None:
        for f in self.files:
            if not f.is_file():
                raise DataError(f"{f}: listed in {INFO} but not there")
            if not tarfile.is_tarfile(f):
                raise DataError(f"{f}: not a tar")

    # ------------------------------------------------------------------ what the loop sees

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def configure(self, batch_size: int, workers: int) -> None:
        """The loader's batch size and worker count (how batches are dealt to workers)."""
        self.batch_size, self.workers = max(1, batch_size), max(0, workers)
        readers = self.world_size * max(1, self.workers)
        if self.world_size <= len(self.files) < readers:
            log.warning(
                "warning: %s has %d shards for %d readers (ranks x workers): workers share shards (every sample "
                "still once)",
                self.name,
                len(self.files),
                readers,
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to stream and the samples of this rank's share already seen (a resumed run)."""
        self._state[0], self._state[1] = epoch, start

    def rank_range(self, r: int) -> Tuple[int, int]:
        """Rank ``r``'s positions in the epoch's sequence: ``[lo, hi)``."""
        n, w = self.num_samples, self.world_size
        lo = r * (n // w) + min(r, n % w)
        return lo, lo + n // w + (1 if r < n % w else 0)

    def per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        return self.per_rank() - (int(self._state[1]) if self.train else 0)

    @property
    def bad_count(self) -> int:
        return int(self._bad.sum())

    @property
    def bad_images(self) -> List[str]:
        return [self.sample_name(int(i)) for i in torch.nonzero(self._bad).flatten().tolist()]

    def sample_name(self, sid: int) -> str:
        """``SHARD.tar:KEY`` of the sample with id ``sid`` (its place in the written order)."""
        s = int(np.searchsorted(self.offsets, sid, side="right") - 1)
        return f"{self.files[s].name}:#{sid - int(self.offsets[s])}"

    def summary(self) -> str:
        pos = self.labels.positives()
        card = float(pos.sum()) / max(self.num_samples, 1)
        order = np.argsort(pos, kind="stable")
        rare = ", ".join(f"{self.class_names[k]} ({int(pos[k])})" for k in order[:3])
        return (
            f"{self.name}: {self.num_samples} images in {len(self.files)} shards, {self.num_classes} classes, "
            f"{card:.2f} labels/image; rarest: {rare}"
        )

    # ------------------------------------------------------------------ the stream

    def _sequence(self, epoch: int) -> np.ndarray:
        """Sample ids in the epoch's order: the shards end to end (shuffled by shard when training)."""
        order = np.arange(len(self.files))
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        return np.concatenate(
            [np.arange(self.offsets[s], self.offsets[s + 1]) for s in order] or [np.zeros(0, np.int64)]
        )

    def _rank_share(self, epoch: int) -> np.ndarray:
        lo, hi = self.rank_range(self.rank)
        share = self._sequence(epoch)[lo:hi]
        pad = self.per_rank() - len(share)
        return np.concatenate([share, share[:pad]]) if pad > 0 and len(share) else share

    def _worker_part(self, share: np.ndarray, k: int, workers: int) -> np.ndarray:
        """Worker ``k``'s samples: whole batches, so the loader's batch count is the rank's."""
        b = self.batch_size
        batches = [share[a : a + b] for a in range(0, len(share), b)]
        if self.train:  # contiguous runs of batches: each worker reads its own stretch of the tars
            per = -(-len(batches) // workers)
            mine = batches[k * per : (k + 1) * per]
        else:  # batch j to worker j % K: the loader yields the rank's samples in order
            mine = batches[k::workers]
        return np.concatenate(mine) if mine else np.zeros(0, np.int64)

    def _shuffled(self, part: np.ndarray, epoch: int, k: int) -> np.ndarray:
        """The order a shuffle buffer of ``shuffle_buffer`` samples yields ``part`` in (ids only)."""
        if not self.train or self.shuffle_buffer <= 1 or len(part) < 2:
            return part
        rng = np.random.default_rng([self.seed, epoch, self.rank, k, 7])
        buf: List[int] = []
        out: List[int] = []
        for sid in part.tolist():
            if len(buf) < self.shuffle_buffer:
                buf.append(sid)
                continue
            j = int(rng.integers(len(buf)))
            out.append(buf[j])
            buf[j] = sid
        rng.shuffle(buf)
        return np.asarray(out + buf, dtype=np.int64)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        k, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self._state[0]), int(self._state[1])
        share = self._rank_share(epoch)
        if self.train and start:
            share = share[start:]
        part = self._worker_part(share, k, workers)
        return self._read(part, self._shuffled(part, epoch, k))

    def _read(self, sequence: np.ndarray, order: np.ndarray) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Read ``sequence``'s samples in its order and yield them in ``order`` (a shuffle of it whose
        samples are at most a buffer apart: the encoded bytes wait, not decoded pictures); an
        unreadable sample's place goes to the next readable one."""
        pending: Dict[int, Any] = {}
        left: Dict[int, int] = {}
        for sid in order.tolist():
            left[sid] = left.get(sid, 0) + 1
        want = iter(order.tolist())
        nxt = next(want, None)
        owed, last = 0, None
        for sid, raw in self._stream(sequence):
            pending[sid] = raw
            while nxt is not None and nxt in pending:
                raw_next = pending[nxt]
                left[nxt] -= 1
                if not left[nxt]:
                    del pending[nxt]
                item = self._decode(nxt, raw_next)
                nxt = next(want, None)
                if item is None:
                    owed += 1
                    continue
                last = item
                for _ in range(owed + 1):
                    yield self._as_tensors(item)
                owed = 0
        for _ in range(owed if last is not None else 0):
            yield self._as_tensors(last)

    def _as_tensors(self, item) -> Tuple[torch.Tensor, torch.Tensor]:
        img, row = item
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.from_numpy(row.copy())

    def _stream(self, sequence: np.ndarray) -> Iterator[Tuple[int, Any]]:
        """(sample id, (its shard, its key, its encoded files)) for each id of ``sequence``, in its
        order: each run of increasing ids in one shard is one pass over that tar."""
        if not len(sequence):
            return
        shard = np.searchsorted(self.offsets, sequence, side="right") - 1
        cut = np.flatnonzero((np.diff(shard) != 0) | (np.diff(sequence) <= 0)) + 1
        for run in np.split(sequence, cut):
            s = int(np.searchsorted(self.offsets, run[0], side="right") - 1)
            base = int(self.offsets[s])
            for index, raw in self._read_tar(s, (run - base).tolist()):
                yield base + index, (s, *raw)

    def _read_tar(self, s: int, wanted: List[int]) -> Iterator[Tuple[int, Any]]:
        """(index in shard, (key, files by extension)) for the ``wanted`` indices (increasing) of shard ``s``."""
        path = self.files[s]
        want = set(wanted)
        last = wanted[-1]
        index, key, files = -1, None, {}
        tar: Optional[tarfile.TarFile] = None
        try:
            tar = tarfile.open(path, mode="r:")
            for m in tar:
                if not m.isfile():
                    continue
                k, _, ext = m.name.partition(".")
                if k != key:
                    if key is not None and index in want:
                        yield index, (key, files)
                    index, key, files = index + 1, k, {}
                    if index > last:
                        return
                if index in want:
                    if ext.lower() in files:
                        raise DataError(f"{path}: two samples with the key {k!r}")
                    f = tar.extractfile(m)
                    files[ext.lower()] = f.read() if f is not None else b""
            if key is not None and index in want:
                yield index, (key, files)
        except (tarfile.TarError, EOFError, OSError) as e:
            at = f" at byte {tar.offset}" if tar is not None else ""
            raise DataError(f"{path}: a broken tar{at} ({type(e).__name__}: {e})") from None
        finally:
            if tar is not None:
                tar.close()
        if last > index:
            raise DataError(f"{path}: holds {index + 1} samples, {INFO} says {int(self.lengths[s])}")

    def _decode(self, sid: int, raw) -> Optional[Tuple[Any, np.ndarray]]:
        """A sample's (picture, label row), or None (recorded as bad) when it is not whole."""
        from ..images import decode_rgb

        s, key, files = raw
        name = f"{self.files[s].name}:{key}"
        pictures = [e for e in files if e != "json"]
        try:
            if "json" not in files or not pictures:
                raise DataError(f"{name}: {'no labels' if 'json' not in files else 'no picture'}")
            row = self._row(name, files["json"])
            img = decode_rgb(files[pictures[0]], name, self.draft_size if self.train else None)
        except DataError as e:
            self._record_bad(sid, e)
            return None
        return img, row

    def _row(self, name: str, data: bytes) -> np.ndarray:
        try:
            labels = json.loads(data)
            row = np.full(self.num_classes, self.unlisted, dtype=np.float32)
            for field, value in (("neg", 0.0), ("unk", -1.0), ("pos", 1.0)):
                idx = np.asarray(labels.get(field, []), dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
                    raise DataError(f"{name}: class {int(idx.max())} is out of range for {self.num_classes} classes")
                row[idx] = value
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{name}: labels that are not a JSON object of class lists ({type(e).__name__})") from None
        return row

    def _record_bad(self, sid: int, e: Exception) -> None:
        if not self._bad[sid]:
            self._bad[sid] = 1
            log.warning("skipping unreadable sample %s", e)
        if self.bad_count > self.tolerated:
            raise DataError(
                f"{self.name}: {self.bad_count} of {self.num_samples} samples are unreadable (more than "
                f"{self.tolerated}: --max-bad-images / --max-bad-fraction raise the limit); last: {e}"
            )


def create_shards(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
    train: Optional[bool] = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
) -> ShardDataset:
    """A split of a shards folder (:class:`ShardDataset`); ``train`` defaults to ``split == 'train'``."""
    return ShardDataset(
        root,
        split,
        transform,
        read,
        train=(split == "train") if train is None else train,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
