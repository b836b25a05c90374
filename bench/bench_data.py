"""Data-loading throughput (images/s of the loader alone), ours against the official pattern.

Two sets: the built-in demo (64 px PNGs) and a generated 2,000-image COCO-layout set
(640x480 JPEGs, resized to 448 px). "ours" is ``asl.data`` (label matrix precomputed at
construction, PIL decode, one squish resize); "official" is the official repository's
CocoDetection pattern, which queries pycocotools for every item (``getAnnIds`` +
``loadAnns``) and builds the target in ``__getitem__``. Same transform, batch 32,
2 workers, one warm-up pass then timed passes, measured in the same run.

Shards (``--dataset shards``, written by ``asl-data shard``): the same 2,000 pictures as tars,
read by the same transforms, beside the files; and the time ``asl-data shard`` takes on the demo
and on a 10,000-picture COCO-layout set (``--shard-images``).

    python bench/bench_data.py [--images 2000] [--workers 2] [--root /tmp/asl_bench_coco] [--shard-images 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.data import ReadOptions, build_transform, create_dataset  # noqa: E402
from asl.data.demo import ensure_demo  # noqa: E402


def make_coco_layout(root: Path, n: int, split: str = "val2014") -> Path:
    """n 640x480 JPEGs with smooth content and 1-4 annotations each, 80 categories."""
    marker = root / f".done_{n}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    cats = [{"id": i, "name": f"c{i}"} for i in list(range(1, 12)) + list(range(13, 26)) + list(range(27, 83))][:80]
    images, anns = [], []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        c = rng.integers(0, 255, 3)
        arr = ((np.sin(xx / (20 + i % 50)) + 1) * 60 + c[0] * 0.5).astype(np.uint8)
        img = np.stack([arr, np.roll(arr, i % 97, axis=1), (yy % 256).astype(np.uint8)], -1)
        name = f"COCO_{split}_{i:012d}.jpg"
        Image.fromarray(img).save(root / split / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
        for k in rng.choice(80, size=rng.integers(1, 5), replace=False):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cats[k]["id"],
                    "bbox": [0, 0, 10, 10],
                    "area": 100,
                    "iscrowd": 0,
                }
            )
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    marker.touch()
    return root


class OfficialCocoDetection(torch.utils.data.Dataset):
    """The official repository's loader pattern: a pycocotools query per item."""

    def __init__(self, root: Path, ann_file: Path, transform):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        self.root, self.transform = root, transform
        self.ids = list(self.coco.imgToAnns.keys())
        self.cat2cat = {}
        for cat in self.coco.cats.keys():
            self.cat2cat[cat] = len(self.cat2cat)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        img_id = self.ids[index]
        target = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id))
        output = torch.zeros((3, 80), dtype=torch.long)
        for obj in target:
            if obj["area"] < 32 * 32:
                output[0][self.cat2cat[obj["category_id"]]] = 1
            elif obj["area"] < 96 * 96:
                output[1][self.cat2cat[obj["category_id"]]] = 1
            else:
                output[2][self.cat2cat[obj["category_id"]]] = 1
        path = self.coco.loadImgs(img_id)[0]["file_name"]
        img = Image.open(self.root / path).convert("RGB")
        return self.transform(img), output.max(dim=0)[0]


def throughput(ds, workers: int, batch: int, passes: int) -> float:
    if hasattr(ds, "configure"):  # shards deal whole batches to the workers
        ds.configure(batch, workers)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # warm-up: workers started, files in the page cache
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(passes):
        for images, _ in loader:
            n += images.shape[0]
    return n / (time.perf_counter() - t0)


def _shards_of(root: Path, out: Path) -> Path:
    """The COCO layout's val2014 as shards (a one-picture train2014 beside it: a set needs its training split)."""
    from asl.data.shard import shard_dataset

    if not (out / "_info.json").is_file():
        make_coco_layout(root, 1, "train2014")
        shard_dataset(str(root), str(out), "coco", shard_size=256 << 20)
    return out


def _time_sharding(demo: Path, big: Path, n: int) -> None:
    """Seconds ``asl-data shard`` takes on the demo and on an n-picture COCO layout (pictures in the page cache)."""
    import shutil
    import tempfile

    from asl.data.shard import shard_dataset

    ensure_demo(str(demo))
    make_coco_layout(big, n, "train2014")
    make_coco_layout(big, 1, "val2014")
    for name, src, fmt in (("demo", demo, "demo"), (f"COCO layout {n}", big, "coco")):
        with tempfile.TemporaryDirectory() as tmp:
            r = shard_dataset(str(src), str(Path(tmp) / "out"), fmt)
            size = sum(f.stat().st_size for f in (Path(tmp) / "out").glob("*.tar")) / 2**20
            total = sum(r["splits"].values())
            print(
                f"asl-data shard {name}: {total} pictures, {size:.0f} MiB of tars in {r['seconds']:.1f} s "
                f"({total / r['seconds']:.0f} pictures/s)"
            )
            shutil.rmtree(Path(tmp) / "out")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--root", default="/tmp/asl_bench_coco")
    ap.add_argument("--demo-root", default="data/demo")
    ap.add_argument("--shard-images", type=int, default=10_000, help="the COCO-layout set asl-data shard is timed on")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    root = make_coco_layout(Path(args.root), args.images)
    shards = _shards_of(root, Path(args.root + "_shards"))
    print(f"torch {torch.__version__}, workers={args.workers}, batch={args.batch_size}")
    print(
        f"{'set':>22} | {'transform':>10} | {'ours img/s':>10} | {'official img/s':>14} | {'ours/official':>13} | "
        f"{'shards img/s':>12} | {'shards/ours':>11}"
    )
    for size, train in ((448, False), (448, True), (224, False), (224, True)):
        tf = build_transform(train, size, augment="cutout_randaugment" if train else "none")
        read = ReadOptions(draft_size=size if train else None)  # as training
        ours = create_dataset("coco", str(root), "val2014", tf, read)
        official = OfficialCocoDetection(root / "val2014", root / "annotations/instances_val2014.json", tf)
        streamed = create_dataset("shards", str(shards), "val", tf, read, train=train, shuffle_buffer=256)
        a = throughput(ours, args.workers, args.batch_size, 1)
        b = throughput(official, args.workers, args.batch_size, 1)
        c = throughput(streamed, args.workers, args.batch_size, 1)
        print(
            f"{f'COCO layout {len(ours)} @{size}':>22} | {'train' if train else 'eval':>10} | {a:>10.1f} | "
            f"{b:>14.1f} | {a / b:>13.2f} | {c:>12.1f} | {c / a:>11.2f}"
        )
    _time_sharding(Path(args.demo_root), Path(args.root + f"_{args.shard_images}"), args.shard_images)
    ensure_demo(args.demo_root)  # the explicit generation step (once)
    demo = create_dataset("demo", args.demo_root, "train", build_transform(True, 64), ReadOptions(draft_size=64))
    a = throughput(demo, args.workers, 64, 2)
    print(f"{f'demo {len(demo)} @64':>22} | {'train':>10} | {a:>10.1f} | {'-':>14} | {'-':>13}")


if __name__ == "__main__":
    main()
