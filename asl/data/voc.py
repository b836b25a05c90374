"""Pascal VOC 2007 / 2012: ``VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main}``.

Labels come from the XML annotations. A class present in an image only through
``<difficult>1</difficult>`` objects follows ``difficult``: ``ignore`` (the usual
protocol: -1, left out of the loss and of AP), ``positive`` or ``negative``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions, check_exists, read_text

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
DIFFICULT = ("ignore", "positive", "negative")


def find_year_dir(root: Path, year: Optional[str]) -> Path:
    """ROOT may be ``VOCdevkit``'s parent, ``VOCdevkit`` or ``VOC20xx`` itself."""
    if (root / "Annotations").is_dir():
        return root
    years = [year] if year else ["2007", "2012"]
    for base in (root, root / "VOCdevkit"):
        for y in years:
            if (base / f"VOC{y}" / "Annotations").is_dir():
                return base / f"VOC{y}"
    raise DataError(f"no VOCdevkit/VOC{'|'.join(years)}/Annotations under {root}")


def parse_annotation(xml_path: Path):
    """[(class name, difficult)] of one XML file."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: malformed XML ({e})") from None
    except OSError:
        raise DataError(f"annotation not found: {xml_path}") from None
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        diff = (obj.findtext("difficult") or "0").strip()
        out.append((name, diff == "1"))
    return out


def create_voc(
    root: str,
    split: str = "trainval",
    transform: Optional[Callable] = None,
    voc_year: Optional[str] = None,
    difficult: str = "ignore",
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """Load a VOC split.

    Args:
        root: the folder holding ``VOCdevkit`` (or ``VOCdevkit``, or ``VOC20xx``).
        split: ``train``, ``val``, ``trainval`` or ``test``.
        transform: PIL image -> tensor.
        voc_year: ``2007`` or ``2012`` (default: 2007 if present, else 2012).
        difficult: ``ignore`` (-1), ``positive`` or ``negative`` for difficult-only classes.
        read: how pictures are read (:class:`~asl.data.base.ReadOptions`: unreadable ones tolerated,
            training's JPEG draft decode).
    """
    if difficult not in DIFFICULT:
        raise DataError(f"difficult must be one of {', '.join(DIFFICULT)}, got {difficult!r}")
    year_dir = find_year_dir(check_exists(Path(root), "VOC root"), voc_year)
    split_file = check_exists(year_dir / "ImageSets" / "Main" / f"{split}.txt", f"VOC split '{split}'")
    ids = [ln.strip().split()[0] for ln in read_text(split_file, "VOC split file").splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"{split_file}: split {split!r} is empty")
    index = {c: k for k, c in enumerate(VOC_CLASSES)}
    targets = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.float32)
    for r, image_id in enumerate(ids):
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        easy, hard = set(), set()
        for name, is_difficult in parse_annotation(xml_path):
            if name not in index:
                raise DataError(f"{xml_path}: unknown class {name!r}")
            (hard if is_difficult else easy).add(index[name])
        for k in easy:
            targets[r, k] = 1.0
        for k in hard - easy:
            targets[r, k] = {"ignore": -1.0, "positive": 1.0, "negative": 0.0}[difficult]
    paths = [str(year_dir / "JPEGImages" / f"{i}.jpg") for i in ids]
    return MultiLabelDataset(
        paths,
        targets,
        list(VOC_CLASSES),
        transform,
        name=f"voc {year_dir.name} {split}",
        read=read,
    )
