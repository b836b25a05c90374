"""Shared fixtures: tiny datasets in the real on-disk formats, a tiny trained checkpoint."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# No test reaches the network, and none sees the machine's own Hugging Face cache: a test that
# needs pretrained weights lays out a cache of its own (tests/test_pretrained.py).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="asl-test-hf-cache-")


def make_tagged(
    root: Path,
    n_train: int = 48,
    n_val: int = 24,
    size: int = 32,
    seed: int = 0,
    split_column: bool = True,
    classes=("cat", "dog", "sky", "tree"),
) -> Path:
    """A learnable tagged dataset: each class paints a fixed colour in a fixed quadrant."""
    rng = np.random.default_rng(seed)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        arr = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
        labels = [c for c in range(len(classes)) if rng.random() < 0.35]
        for c in labels:
            y0, x0 = (c // 2) * size // 2, (c % 2) * size // 2
            arr[y0 : y0 + size // 2, x0 : x0 + size // 2] = colours[c % len(colours)]
        name = f"img/{i:04d}.png"
        Image.fromarray(arr).save(root / name)
        split = "train" if i < n_train else "val"
        rows.append([name, "|".join(classes[c] for c in labels)] + ([split] if split_column else []))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"] + (["split"] if split_column else []))
        w.writerows(rows)
    return root


@pytest.fixture
def tagged_root(tmp_path) -> Path:
    return make_tagged(tmp_path / "tagged")


# The settings of trained_run (a test resuming it passes the same ones).
RUN_SETTINGS = (
    "--no-pretrained --model-name test_resnet --image-size 32 --batch-size 16 --epochs 2 --lr 3e-3 "
    "--workers 0 --ema-decay 0.9 --seed 1".split()
)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 2-epoch run of train.py on a tiny tagged set (session-wide: reused by the CLI tests)."""
    import train
    from asl import cli

    base = tmp_path_factory.mktemp("run")
    data = make_tagged(base / "data")
    out = base / "out"
    rc = cli.run(train.main, [str(data), "--dataset", "tagged", *RUN_SETTINGS, "--output", str(out)])
    assert rc == 0
    return {"data": data, "out": out}


def _image(path: Path, colour=(120, 30, 200), size=40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def make_coco(root: Path, split: str = "val2014") -> Path:
    """COCO layout with non-contiguous category ids (listed out of order) and an unannotated image."""
    import json

    cats = [{"id": 7, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}]
    images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "width": 40, "height": 40} for i in (11, 22, 33, 44)]
    anns = [
        {"id": 1, "image_id": 11, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 90, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 3, "image_id": 22, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 4, "image_id": 33, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 5, "image_id": 33, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
    ]  # image 44 has no annotation
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    for im in images:
        _image(root / split / im["file_name"], colour=(im["id"] * 5, 80, 160))
    return root


VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 0)],
    "000002": [("cat", 1)],  # only difficult: ignored
    "000003": [("cat", 1), ("cat", 0), ("car", 0)],  # difficult and easy: positive
    "000004": [("tvmonitor", 0)],
}


def make_voc(
    root: Path,
    year: str = "2007",
    splits=(("trainval", ["000001", "000002", "000003"]), ("test", ["000004", "000002"])),
) -> Path:
    d = root / "VOCdevkit" / f"VOC{year}"
    (d / "Annotations").mkdir(parents=True, exist_ok=True)
    (d / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for image_id, objs in VOC_OBJECTS.items():
        body = "".join(f"<object><name>{n}</name><difficult>{dfc}</difficult></object>" for n, dfc in objs)
        (d / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{body}</annotation>"
        )
        _image(d / "JPEGImages" / f"{image_id}.jpg", colour=(int(image_id) * 40, 60, 90))
    for split, ids in splits:
        (d / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def make_nuswide(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        ("images/a.jpg", "['sky', 'clouds']", "train"),
        ("images/b.jpg", "[]", "train"),
        ("images/c.jpg", "['water']", "val"),
        ("images/d.jpg", "['sky']", "val"),
        ("images/e.jpg", "['water', 'sky']", "train"),
    ]
    with open(root / "nus_wid_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "label", "split_name"])
        w.writerows(rows)
    for p, _, _ in rows:
        _image(root / p)
    return root
