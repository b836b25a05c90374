"""Tagging speed: an exported model on onnxruntime against the PyTorch checkpoint, on this CPU.

Cold start: ``python infer.py --model-path M --pic-path pics/demo.png`` as a fresh process (wall
time and the process's peak RSS, median of ``--reps``; the first run of each is discarded, it
warms the file cache). Steady state: images/s of the model alone (preprocessed batches, after
warm-up) at batch 1 and 16, PyTorch eager (``inference_mode``) vs onnxruntime, in this process.
Models: the demo checkpoint (``--demo-checkpoint``, default runs/demo/best.pth; an untrained
resnet10t with the demo's classes when it is absent: speed does not depend on the weights) and
TResNet-M 224 (untrained, 80 classes).

Folder tagging: ``infer.py PICS --tags-out OUT`` on a nested folder of JPEGs, end to end, at
batch 1 and 16, PyTorch and onnxruntime.

    python bench/bench_infer.py [--reps 5] [--skip-tresnet] [--folder-pictures 128]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asl.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint  # noqa: E402
from asl.config import load_config  # noqa: E402
from asl.export import export_onnx  # noqa: E402
from asl.models import create_model, data_config  # noqa: E402
from asl.opening import model_from_checkpoint  # noqa: E402
from asl.predict import OnnxTagger  # noqa: E402

_CHILD = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "assert p.returncode == 0, p.stderr.decode()[-500:]\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def cold_start(model: Path, pic: Path, reps: int):
    """(median wall s, median peak RSS MiB) of tagging one picture in a fresh process."""
    walls, rss = [], []
    for i in range(reps + 1):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                sys.executable,
                str(REPO / "infer.py"),
                "--model-path",
                str(model),
                "--pic-path",
                str(pic),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        wall, kib = out.stdout.split()
        if i:  # the first run warms the file cache
            walls.append(float(wall))
            rss.append(int(kib) / 1024)
    return statistics.median(walls), statistics.median(rss)


def steady(fn, batch: np.ndarray, reps: int) -> float:
    """images/s of ``fn(batch)``, median of ``reps`` timed calls after 3 warm-up calls."""
    for _ in range(3):
        fn(batch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return len(batch) / statistics.median(times)


def folder_pictures(root: Path, n: int) -> Path:
    """``n`` random 320 x 240 JPEGs in a two-level tree (what a folder to tag looks like)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        path = root / f"set{k % 4}" / f"sub{k % 2}" / f"{k:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
    return root


def folder_tagging(model: Path, pics: Path, out: Path, batch: int) -> float:
    """images/s of ``infer.py PICS --tags-out OUT --batch-size B`` end to end in this process
    (opening the model, decoding, preprocessing, scoring, writing the .txt files), after one
    warm-up run."""
    from asl.infer import tag_images

    n = sum(1 for _ in pics.rglob("*.jpg"))
    flags = {"model_path": str(model), "pic_path": [str(pics)], "tags_out": str(out), "batch_size": batch}
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its one summary line per run
            tag_images(load_config(None, {**flags, "overwrite": True}))
        times.append(time.perf_counter() - t0)
    return n / times[-1]


def prepare(tmp: Path, demo_ckpt: Path, tresnet: bool):
    """[(label, checkpoint, onnx, size)]: the models, exported with a dynamic batch."""
    models = []
    if demo_ckpt.is_file():
        ckpt_path, label = demo_ckpt, f"demo ({demo_ckpt})"
    else:
        from asl.data.demo import CLASS_NAMES

        torch.manual_seed(0)
        model = create_model("resnet10t", len(CLASS_NAMES))
        mean, std = data_config("resnet10t")
        ckpt_path, label = tmp / "demo.pth", "demo (untrained resnet10t)"
        save_checkpoint(
            make_checkpoint(model, model_name="resnet10t", class_names=CLASS_NAMES, image_size=64, mean=mean, std=std),
            ckpt_path,
        )
    models.append((label, ckpt_path, 64))
    if tresnet:
        torch.manual_seed(0)
        model = create_model("tresnet_m", 80)
        save_checkpoint(
            make_checkpoint(
                model,
                model_name="tresnet_m",
                class_names=[f"c{k}" for k in range(80)],
                image_size=224,
                mean=(0, 0, 0),
                std=(1, 1, 1),
            ),
            tmp / "tresnet_m.pth",
        )
        models.append(("TResNet-M 224 (untrained)", tmp / "tresnet_m.pth", 224))
    out = []
    for label, ckpt, size in models:
        onnx_path = tmp / (Path(ckpt).stem + ".onnx")
        export_onnx(
            load_config(
                None, {"model_path": str(ckpt), "output": str(onnx_path), "dynamic_batch": True, "overwrite": True}
            )
        )
        out.append((label, Path(ckpt), onnx_path, size))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--demo-checkpoint", default=str(REPO / "runs" / "demo" / "best.pth"))
    ap.add_argument("--skip-tresnet", action="store_true")
    ap.add_argument("--folder-pictures", type=int, default=128, help="pictures in the folder-tagging run")
    args = ap.parse_args(argv)
    pic = REPO / "pics" / "demo.png"
    with tempfile.TemporaryDirectory() as tmp:
        models = prepare(Path(tmp), Path(args.demo_checkpoint), not args.skip_tresnet)
        print(f"\ntorch {torch.__version__} ({torch.get_num_threads()} threads), CPU")
        print(
            f"{'model':>34} | {'cold start PyTorch':>18} | {'cold start ONNX':>15} | {'ONNX/PyTorch':>12} | "
            f"{'b1 PyTorch':>10} | {'b1 ONNX':>8} | {'ratio':>5} | {'b16 PyTorch':>11} | {'b16 ONNX':>8} | "
            f"{'ratio':>5}"
        )
        for label, ckpt, onnx_path, size in models:
            pt_wall, pt_rss = cold_start(ckpt, pic, args.reps)
            ox_wall, ox_rss = cold_start(onnx_path, pic, args.reps)
            model, _ = model_from_checkpoint(load_checkpoint(ckpt))
            tagger = OnnxTagger(str(onnx_path), device="cpu")

            def torch_fn(b, model=model):
                with torch.inference_mode():
                    return torch.sigmoid(model(torch.from_numpy(b))).numpy()

            cells = []
            for n in (1, 16):
                batch = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
                a, b = steady(torch_fn, batch, args.reps * 2), steady(tagger.run, batch, args.reps * 2)
                cells += [f"{a:>10.1f}", f"{b:>8.1f}", f"{b / a:>5.2f}"]
            print(
                f"{label:>34} | {pt_wall:>6.2f} s {pt_rss:>5.0f} MiB | {ox_wall:>4.2f} s {ox_rss:>4.0f} MiB | "
                f"{ox_wall / pt_wall:>5.2f}, {ox_rss / pt_rss:>4.2f} | {cells[0]} | {cells[1]} | {cells[2]} | "
                f"{cells[3]:>11} | {cells[4]} | {cells[5]}"
            )
        print("images/s of the model alone (preprocessed batches); ratio = ONNX / PyTorch")
        pics = folder_pictures(Path(tmp) / "pics", args.folder_pictures)
        print(f"\nfolder tagging: infer.py PICS --tags-out OUT, {args.folder_pictures} JPEGs 320 x 240, end to end")
        print(f"{'model':>34} | {'b1 PyTorch':>10} | {'b16 PyTorch':>11} | {'b1 ONNX':>8} | {'b16 ONNX':>8}")
        for label, ckpt, onnx_path, _ in models:
            cells = [folder_tagging(m, pics, Path(tmp) / "tags", b) for m in (ckpt, onnx_path) for b in (1, 16)]
            print(f"{label:>34} | {cells[0]:>10.1f} | {cells[1]:>11.1f} | {cells[2]:>8.1f} | {cells[3]:>8.1f}")
        print("images/s, opening the model and writing the tag files included")


if __name__ == "__main__":
    main()
