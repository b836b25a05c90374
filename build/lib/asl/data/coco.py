"""MS-COCO 2014 / 2017, and any COCO-format JSON, through pycocotools.

Layout: ``ROOT/annotations/instances_{split}.json`` and ``ROOT/{split}/`` images,
``split`` one of ``train2014``, ``val2014``, ``train2017``, ``val2017``. Or any
COCO-format JSON (``ann_file``) with its ``image_dir``, as labeling tools export.

Official semantics: only images with at least one annotation (``coco.imgToAnns``)
unless ``keep_unannotated``; category ids map to 0..C-1 in the order of
``coco.cats``; class names come from the JSON. The label matrix is built once at
construction, so ``__getitem__`` makes no pycocotools query.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from .base import MultiLabelDataset, check_exists

SPLITS = ("train2014", "val2014", "train2017", "val2017")


def _load_coco(ann_file: Path):
    from pycocotools.coco import COCO

    try:
        # pycocotools prints its progress on stdout; keep the command line's output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{ann_file}: not a UTF-8 JSON file") from None
    except (KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{ann_file}: not a COCO annotation file ({type(e).__name__}: {e})") from None


def resolve_split(root: Path, split: str, train: bool) -> str:
    """``train``/``val`` (or None) to the year split present under ``root``."""
    if split in SPLITS:
        return split
    kind = {"train": "train", "val": "val", "test": "val"}.get(split)
    if kind is None:
        raise DataError(f"unknown COCO split {split!r}; use one of {', '.join(SPLITS)}")
    for year in ("2014", "2017"):
        if (root / "annotations" / f"instances_{kind}{year}.json").exists():
            return f"{kind}{year}"
    raise DataError(f"no annotations/instances_{kind}2014.json or instances_{kind}2017.json under {root}")


def create_coco(
    root: str,
    split: str = "train2014",
    transform: Optional[Callable] = None,
    ann_file: Optional[str] = None,
    image_dir: Optional[str] = None,
    keep_unannotated: bool = False,
    max_bad_fraction: float = 0.01,
    max_bad_images: int = 5,
    draft_size: Optional[int] = None,
) -> MultiLabelDataset:
    """Load a COCO split.

    Args:
        root: the COCO folder (holding ``annotations/`` and the image folders).
        split: ``train2014``, ``val2014``, ``train2017``, ``val2017``, or ``train`` / ``val``
            (the year found on disk, 2014 first). Ignored when ``ann_file`` is given.
        transform: PIL image -> tensor.
        ann_file: a COCO-format JSON to use instead of the standard layout.
        image_dir: the images of ``ann_file`` (default: ``root``).
        keep_unannotated: keep images without annotations as all-negative samples.
        max_bad_fraction, max_bad_images: tolerated unreadable images (the larger of the two limits).
        draft_size: training's JPEG draft decode (:class:`~asl.data.base.MultiLabelDataset`).
    """
    root_p = Path(root)
    if ann_file:
        ann = check_exists(Path(ann_file), "COCO annotation file")
        images = Path(image_dir) if image_dir else root_p
        name = f"coco {ann}"
    else:
        check_exists(root_p, "COCO root")
        split = resolve_split(root_p, split, train=True)
        ann = check_exists(root_p / "annotations" / f"instances_{split}.json", "COCO annotation file")
        images = Path(image_dir) if image_dir else root_p / split
        name = f"coco {split}"
    coco = _load_coco(ann)
    if not coco.cats:
        raise DataError(f"{ann}: no categories")
    cat_index = {cid: k for k, cid in enumerate(coco.cats.keys())}
    class_names = [str(coco.cats[cid].get("name", cid)) for cid in coco.cats]
    img_ids = list(coco.imgToAnns.keys())
    if keep_unannotated:
        annotated = set(img_ids)
        img_ids += [i for i in coco.imgs if i not in annotated]
    if not img_ids:
        raise DataError(f"{ann}: split is empty (no annotated images)")
    row = {img_id: r for r, img_id in enumerate(img_ids)}
    targets = np.zeros((len(img_ids), len(class_names)), dtype=np.float32)
    for a in coco.dataset.get("annotations", []):
        cid = a.get("category_id")
        if cid not in cat_index:
            raise DataError(f"{ann}: annotation {a.get('id')} has unknown category id {cid}")
        targets[row[a["image_id"]], cat_index[cid]] = 1.0
    paths = []
    for img_id in img_ids:
        info = coco.imgs.get(img_id)
        if info is None or "file_name" not in info:
            raise DataError(f"{ann}: annotation refers to image id {img_id}, which has no 'images' entry")
        paths.append(str(images / info["file_name"]))
    return MultiLabelDataset(paths, targets, class_names, transform, name=name, max_bad_fraction=max_bad_fraction,
                             max_bad_images=max_bad_images, draft_size=draft_size)
