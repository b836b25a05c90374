"""``--dataset auto``: which format a folder holds, told from what it holds (no picture is read)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from ..errors import DataError
from . import classfolder, formats, herbarium, imagefolder, labelstudio, openimages, shards, table, tagged

# What each format is recognised by, in the words of the error that lists them.
LOOKED_FOR = (
    ("demo", "demo.json"),
    ("coco", "annotations/instances_*.json"),
    ("voc", "VOCdevkit/, VOC20xx/ or JPEGImages/ + Annotations/"),
    ("nuswide", "nus_wid_data.csv"),
    ("tagged", "labels.csv with 'image,labels[,split]'"),
    ("onehot", "_classes.csv or labels.csv with 'filename,<class>,...'"),
    ("imagefolder", "metadata.jsonl / metadata.csv"),
    ("labelstudio", "a Label Studio JSON export"),
    ("sidecar", "pictures with a same-named .txt of tags"),
    ("openimages", "*-annotations-human-imagelabels.csv"),
    ("shards", "_info.json (asl-data shard)"),
    ("classfolder", "train/<class>/<picture> (torchvision's ImageFolder)"),
    ("herbarium", "train/metadata.json (Herbarium 2020)"),
)


def _is_tagged_csv(path: Path) -> bool:
    """A header the labels.csv reader takes (``image,labels``, ``image_name,tags``, ...)."""
    h = table.csv_header(path)
    return len(h) >= 2 and h[0] in tagged.NAME_COLUMNS and h[1] in tagged.TAG_COLUMNS


def _file_candidates(root: Path) -> List[Tuple[str, str]]:
    """The format a label file named on its own is (a CSV or a JSON export)."""
    if root.suffix.lower() == ".csv":
        if _is_tagged_csv(root):
            return [("tagged", root.name)]
        if formats.is_onehot_csv(root):
            return [("onehot", root.name)]
    elif root.suffix.lower() == ".json" and labelstudio.labelstudio_files(root):
        return [("labelstudio", root.name)]
    return []


def candidates(root: Path) -> List[Tuple[str, str]]:
    """Every format ``root`` holds, with what it was told by."""
    if shards.is_shards(root):
        return [("shards", "_info.json")]  # a folder of shards holds nothing else we read
    if root.is_file():
        return _file_candidates(root)
    found = []
    folders = [root, *table.split_folders(root).values()]
    if (root / "demo.json").is_file() and (root / "labels.csv").is_file():
        return [("demo", "demo.json")]  # the demo's labels.csv is its own (a demo.json alone is a leftover)
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        found.append(("coco", "annotations/instances_*.json"))
    if (
        (root / "VOCdevkit").is_dir()
        or any(root.glob("VOC20[0-9][0-9]"))
        or ((root / "JPEGImages").is_dir() and (root / "Annotations").is_dir())
    ):
        found.append(("voc", "a VOC layout"))
    if openimages.is_openimages(root):
        found.append(("openimages", "Open Images' human-verified image labels"))
    if (root / "nus_wid_data.csv").is_file():
        found.append(("nuswide", "nus_wid_data.csv"))
    if (root / "labels.csv").is_file() and _is_tagged_csv(root / "labels.csv"):
        found.append(("tagged", "labels.csv"))
    onehot = [f for f in folders if formats.onehot_file(f) is not None]
    if onehot:
        found.append(("onehot", str(formats.onehot_file(onehot[0]).relative_to(root))))
    meta = [f for f in folders if imagefolder.metadata_file(f) is not None]
    if meta:
        found.append(("imagefolder", str(imagefolder.metadata_file(meta[0]).relative_to(root))))
    studio = [f for f in folders if labelstudio.labelstudio_files(f)]
    if studio:
        found.append(("labelstudio", str(labelstudio.labelstudio_files(studio[0])[0].relative_to(root))))
    if herbarium.is_herbarium(root):
        found.append(("herbarium", "train/metadata.json"))
    if not found and formats.has_sidecars(root):  # a labels file's folder may hold captions too
        found.append(("sidecar", "pictures with same-named .txt files"))
    if not found and classfolder.is_classfolder(root):  # folders of pictures and nothing else: the last guess
        found.append(("classfolder", "train/<class>/ folders of pictures"))
    return found


def detect_dataset(root: str) -> Tuple[str, str]:
    """(format, what told it) of ``root``.

    Raises:
        DataError: no format, or two (each named, with ``--dataset`` to choose).
    """
    path = Path(root)
    if not path.exists():
        raise DataError(f"data folder not found: {root}")
    found = candidates(path)
    if not found:
        looked = "; ".join(f"{what} ({name})" for name, what in LOOKED_FOR)
        raise DataError(f"{root} holds no dataset format --dataset auto knows; looked for: {looked}")
    if len(found) > 1:
        both = " and ".join(f"{name} ({why})" for name, why in found)
        raise DataError(
            f"{root} holds {len(found)} formats, {both}: pass --dataset {found[0][0]} or --dataset {found[1][0]}"
        )
    return found[0]
