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
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions, check_exists

SPLITS = ("train2014", "val2014", "train2017", "val2017")


def _read_annotations(ann_file: Path) -> dict:
    """The COCO JSON, checked before pycocotools indexes it: a byte-order mark is accepted (as the
    CSV reader does); duplicate image ids, category ids or category names, and images without a
    usable ``file_name``, are one :class:`DataError` line (pycocotools would silently drop an image
    or rename a class)."""
    if ann_file.is_dir():
        raise DataError(f"{ann_file} is a folder, not a COCO annotation file (pass the .json file)")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{ann_file}: not a UTF-8 JSON file") from None
    except OSError as e:
        raise DataError(f"{ann_file}: cannot read it ({e.strerror or e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories", []), list)
        or not isinstance(data.get("annotations", []), list)
    ):
        raise DataError(
            f"{ann_file}: not a COCO annotation file (expected 'images', 'annotations' and 'categories' lists)"
        )
    if not all(isinstance(x, dict) for key in ("images", "categories", "annotations") for x in data.get(key, [])):
        raise DataError(
            f"{ann_file}: not a COCO annotation file (an entry of 'images', 'annotations' or "
            f"'categories' is not an object)"
        )

    def duplicates(values):
        return [v for v, k in Counter(values).items() if k > 1]

    for key, what in (("images", "image"), ("categories", "category")):
        ids = [x.get("id") for x in data.get(key, [])]
        if any(i is None or isinstance(i, (dict, list)) for i in ids):
            raise DataError(f"{ann_file}: an entry of '{key}' has no usable 'id'")
        dup = duplicates(ids)
        if dup:
            raise DataError(
                f"{ann_file}: {len(dup)} {what} id{'s are' if len(dup) > 1 else ' is'} listed twice "
                f"(first: {dup[0]!r}); each {what} needs an id of its own"
            )
    names = [str(c.get("name", c["id"])) for c in data.get("categories", [])]
    dup = duplicates(names)
    if dup:
        raise DataError(
            f"{ann_file}: {len(dup)} category name{'s are' if len(dup) > 1 else ' is'} listed twice "
            f"({', '.join(map(repr, dup[:3]))}): two outputs of one name cannot be told apart; merge "
            f"or rename them"
        )
    for img in data["images"]:
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{ann_file}: image id {img['id']!r} has no file name ('file_name': {name!r})")
    return data


def _load_coco(ann_file: Path):
    from pycocotools.coco import COCO

    data = _read_annotations(ann_file)
    try:
        # pycocotools prints its progress on stdout; keep the command line's output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
        return coco
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
    val_ann_file: Optional[str] = None,
    val_image_dir: Optional[str] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """Load a COCO split.

    Args:
        root: the COCO folder (holding ``annotations/`` and the image folders).
        split: ``train2014``, ``val2014``, ``train2017``, ``val2017``, or ``train`` / ``val``
            (the year found on disk, 2014 first). With ``ann_file``: ``train`` / ``val`` (``val``
            reads ``val_ann_file`` when given, else both are a seeded split of ``ann_file``), or
            ``all`` (every image of ``ann_file``).
        transform: PIL image -> tensor.
        ann_file: a COCO-format JSON to use instead of the standard layout (a labeling tool's export).
        image_dir: the images of ``ann_file`` (default: ``root``).
        keep_unannotated: keep images without annotations as all-negative samples.
        val_ann_file: the evaluation split's COCO JSON, beside ``ann_file``.
        val_image_dir: its images (default: ``image_dir``, else ``root``).
        val_fraction: without ``val_ann_file``, the fraction of ``ann_file``'s images held out for
            evaluation (seeded; never the training images).
        seed: the seed of that split.
        read: how pictures are read (:class:`~asl.data.base.ReadOptions`: unreadable ones tolerated,
            training's JPEG draft decode).
    """
    root_p = Path(root)
    holdout = None  # (is this split the held-out part?) for a seeded split of one ann_file
    if ann_file:
        evaluation = split not in ("train", "all") and not split.startswith("train")
        if evaluation and val_ann_file:
            ann = check_exists(Path(val_ann_file), "COCO annotation file (--val-ann-file)")
            images = Path(val_image_dir or image_dir or root_p)
        else:
            ann = check_exists(Path(ann_file), "COCO annotation file")
            images = Path(image_dir) if image_dir else root_p
            if split != "all" and not val_ann_file:
                holdout = evaluation
        name = f"coco {ann}" + (
            "" if holdout is None else f" [{'held-out ' if holdout else ''}{'val' if holdout else 'train'}]"
        )
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
    if holdout is not None:
        # the tagged format's rule: a seeded permutation, round(val_fraction x N) images held out
        rng = np.random.default_rng(seed)
        is_val = np.zeros(len(img_ids), dtype=bool)
        is_val[rng.permutation(len(img_ids))[: int(round(val_fraction * len(img_ids)))]] = True
        img_ids = [i for i, v in zip(img_ids, is_val) if v == holdout]
    if not img_ids:
        raise DataError(
            f"{ann}: split is empty (no annotated images"
            + (
                f" in the {'held-out' if holdout else 'training'} part: adjust --val-fraction, or pass --val-ann-file)"
                if holdout is not None
                else ")"
            )
        )
    row = {img_id: r for r, img_id in enumerate(img_ids)}
    targets = np.zeros((len(img_ids), len(class_names)), dtype=np.float32)
    for a in coco.dataset.get("annotations", []):
        cid = a.get("category_id")
        if cid not in cat_index:
            raise DataError(f"{ann}: annotation {a.get('id')} has unknown category id {cid}")
        r = row.get(a.get("image_id"))
        if r is not None:  # an image of the other part of a seeded split
            targets[r, cat_index[cid]] = 1.0
    paths = []
    for img_id in img_ids:
        info = coco.imgs.get(img_id)
        if info is None or "file_name" not in info:
            raise DataError(f"{ann}: annotation refers to image id {img_id}, which has no 'images' entry")
        paths.append(str(images / info["file_name"]))
    return MultiLabelDataset(
        paths,
        targets,
        class_names,
        transform,
        name=name,
        read=read,
    )
