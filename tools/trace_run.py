"""How far a training run's control travels through the package: a two-epoch run of the tiny
tagged set traced with ``sys.setprofile``, counting the package's files and functions it enters and
how often control comes back into a module it had already left (A -> B -> A counts once).

    python tools/trace_run.py            # prints: files, functions, returns to a module left before

Only calls of the package's functions count (not the libraries under them, not a module's import);
the data loader runs in this process (``--workers 0``) so that every call is seen.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tiny_set(root: Path, n: int = 24) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels", "split"])
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
            w.writerow(
                [
                    f"img/{i}.png",
                    "|".join(c for c in ("cat", "dog") if rng.random() < 0.5),
                    "train" if i < 16 else "val",
                ]
            )
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    from asl import cli

    package = str(ROOT / "asl")
    files, functions, order = set(), set(), []

    def profile(frame, event, arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        code, caller = frame.f_code, frame.f_back
        if not path.startswith(package) or code.co_name == "<module>" or caller is None:
            return
        if caller.f_code.co_name == "<module>":
            return  # a module's import (its body, class bodies, decorators) is not the run's path
        files.add(path)
        functions.add((path, frame.f_code.co_name, frame.f_code.co_firstlineno))
        if not order or order[-1] != path:
            order.append(path)

    with tempfile.TemporaryDirectory() as tmp:
        data = _tiny_set(Path(tmp) / "d")
        argv = [str(data), "--dataset", "tagged", "--model-name", "test_resnet", "--image-size", "32"]
        argv += ["--batch-size", "8", "--epochs", str(args.epochs), "--workers", "0", "--no-pretrained"]
        argv += ["--output", str(Path(tmp) / "run")]
        import train

        sys.setprofile(profile)
        try:
            rc = cli.run(train.main, argv)
        finally:
            sys.setprofile(None)
    seen, returns = set(), 0
    for path in order:
        if path in seen:
            returns += 1
        seen.add(path)
    print(f"exit {rc}: {len(files)} files, {len(functions)} functions, {returns} returns to a module left before")


if __name__ == "__main__":
    main()
