"""Dataset registry: ``create_dataset(name, root, split, transform, **options)``.

Every dataset yields ``(image, target)`` with ``target`` float32 (C,) in {0, 1}
or -1 (unknown) and exposes ``class_names``. Each declares the options it reads
(:class:`DatasetSpec`); an option given for another dataset is an error, never
silently dropped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError, DataError
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions
from .transforms import build_transform

__all__ = [
    "create_dataset",
    "dataset_splits",
    "DATASETS",
    "DatasetSpec",
    "MultiLabelDataset",
    "build_transform",
    "default_splits",
    "ReadOptions",
    "DATASET_OPTIONS",
    "unread_options",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's factory, its default splits and the options it reads (besides the common ones).

    ``factory`` is ``"module:function"`` inside ``asl.data``, imported on first use (so that
    ``python -m asl.data.demo`` runs its module once)."""

    factory: str
    train_split: str
    eval_split: str
    options: Tuple[str, ...] = ()
    follows_checkpoint: bool = False  # takes a checkpoint's class names as its class list (class_order)
    streams: bool = False  # an iterable dataset: told whether it trains, and the run's seed

    def build(self, *args: Any, **kwargs: Any) -> MultiLabelDataset:
        module, func = self.factory.split(":")
        return getattr(importlib.import_module(f".{module}", __name__), func)(*args, **kwargs)


DATASETS: Dict[str, DatasetSpec] = {
    # train2014 / val2014, or the 2017 pair when only it exists
    "coco": DatasetSpec(
        "coco:create_coco",
        "train",
        "val",
        ("ann_file", "image_dir", "keep_unannotated", "val_ann_file", "val_image_dir", "val_fraction", "seed"),
    ),
    "voc": DatasetSpec("voc:create_voc", "trainval", "test", ("voc_year", "difficult")),
    "nuswide": DatasetSpec("nuswide:create_nuswide", "train", "val", ("ann_file", "image_dir")),
    "tagged": DatasetSpec("tagged:create_tagged", "train", "val", ("tag_separator", "val_fraction", "seed")),
    "onehot": DatasetSpec("formats:create_onehot", "train", "val", ("val_fraction", "seed")),
    "sidecar": DatasetSpec("formats:create_sidecar", "train", "val", ("tag_separator", "val_fraction", "seed")),
    "imagefolder": DatasetSpec("formats:create_imagefolder", "train", "val", ("tag_separator", "val_fraction", "seed")),
    "labelstudio": DatasetSpec("formats:create_labelstudio", "train", "val", ("val_fraction", "seed")),
    "demo": DatasetSpec("demo:create_demo", "train", "val", ("demo_classes",)),
    # the published numbers are on test; validation with --val-split validation
    "openimages": DatasetSpec("openimages:create_openimages", "train", "test", follows_checkpoint=True),
    # torchvision's / timm's ImageFolder layout: train/<class>/<picture>, one class per picture
    "classfolder": DatasetSpec("classfolder:create_classfolder", "train", "val"),
    # Herbarium 2020 (FGVC7): train/metadata.json, one category per image; val held out of train
    "herbarium": DatasetSpec("herbarium:create_herbarium", "train", "val", ("val_fraction",)),
    # tar shards of any of these (asl-data shard): "train" / "eval" name the source's own splits
    "shards": DatasetSpec("shards:create_shards", "train", "eval", ("shuffle_buffer",), streams=True),
}
# Every dataset-specific option (a config field of the same name, except ``seed``, the split's).
DATASET_OPTIONS = tuple(sorted({o for s in DATASETS.values() for o in s.options} - {"seed"}))


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def default_splits(name: str):
    """(training split, evaluation split) of a dataset, as train.py and validate.py use them."""
    spec = _spec(name)
    return spec.train_split, spec.eval_split


def unread_options(name: str, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> list:
    """The dataset options in ``values`` set away from ``defaults`` that dataset ``name`` does not read."""
    spec = _spec(name)
    return [o for o in DATASET_OPTIONS if o not in spec.options and values.get(o, defaults[o]) != defaults[o]]


def create_dataset(
    name: str,
    root: str,
    split: str,
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
    **options: Any,
) -> MultiLabelDataset:
    """Build a dataset split by name.

    Args:
        name: a key of ``DATASETS``.
        root: the dataset's folder (or file, for a tagged CSV).
        split: split name (``train``, ``val``, ...).
        transform: PIL image -> tensor.
        read: how its pictures are read (:class:`ReadOptions`), shared by every dataset.
        **options: the options the dataset declares; any other raises :class:`ConfigError`.
    """
    spec = _spec(name)
    implied = ({"class_order"} if spec.follows_checkpoint else set()) | ({"train", "seed"} if spec.streams else set())
    unknown = sorted(set(options) - set(spec.options) - implied)
    if unknown:
        raise ConfigError(f"dataset {name} does not take {', '.join(unknown)} (it reads {', '.join(spec.options)})")
    return spec.build(root, split=split, transform=transform, read=read, **options)


def dataset_splits(
    name: str,
    root: str,
    tag_separator: Optional[str] = None,
    val_fraction: float = 0.2,
    read: ReadOptions = DEFAULT_READ,
) -> Dict[str, MultiLabelDataset]:
    """Every split a dataset holds, by its own split names, in order: the training split, the
    evaluation split, then ``test`` where there is one (a missing or empty split other than the
    training one is left out). The demo is read through its ``labels.csv``, whatever its class
    count. ``tag_separator`` and ``val_fraction`` go to the datasets that read them.

    Args:
        read: how the pictures are read (:class:`ReadOptions`).
    """
    reader = "tagged" if name == "demo" else name
    spec = _spec(reader)
    if spec.streams:  # asl-data inspect / convert / shard read pictures one by one
        raise DataError(
            f"{root} holds shards, which train.py and validate.py stream (--dataset shards); asl-data reads "
            f"the folder they were written from ({name} folders are not read picture by picture)"
        )
    options: Dict[str, Any] = {}
    if "tag_separator" in spec.options and tag_separator is not None:
        options["tag_separator"] = tag_separator
    if "val_fraction" in spec.options:
        options["val_fraction"] = val_fraction
    parts: Dict[str, MultiLabelDataset] = {}
    for split in dict.fromkeys([spec.train_split, spec.eval_split, "test"]):
        try:
            ds = create_dataset(reader, root, split, read=read, **options)
        except DataError:
            if split == spec.train_split:
                raise
            continue
        if not any(_same_pictures(ds, other) for other in parts.values()):  # COCO's "test" is its val
            parts[split] = ds
    return parts


def _same_pictures(a: MultiLabelDataset, b: MultiLabelDataset) -> bool:
    return len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a.paths, b.paths))
