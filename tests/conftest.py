"""Shared fixtures: tiny datasets in the real on-disk formats, a tiny trained checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_tagged(root: Path, n_train: int = 48, n_val: int = 24, size: int = 32, seed: int = 0,
                split_column: bool = True, classes=("cat", "dog", "sky", "tree")) -> Path:
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
            arr[y0:y0 + size // 2, x0:x0 + size // 2] = colours[c % len(colours)]
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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 2-epoch run of train.py on a tiny tagged set (session-wide: reused by the CLI tests)."""
    import train
    from asl import cli

    base = tmp_path_factory.mktemp("run")
    data = make_tagged(base / "data")
    out = base / "out"
    rc = cli.run(train.main, [str(data), "--dataset", "tagged", "--model-name", "test_resnet", "--image-size", "32",
                              "--batch-size", "16", "--epochs", "2", "--lr", "3e-3", "--workers", "0",
                              "--output", str(out), "--ema-decay", "0.9", "--seed", "1"])
    assert rc == 0
    return {"data": data, "out": out}
