"""Write requirements*.txt from pyproject.toml, the one dependency list.

    python tools/requirements.py          # rewrite the files
    python tools/requirements.py --check  # exit 1 when a file differs from pyproject.toml

The files are what `pip install -r ...` reads on a fresh machine (README: the two commands):
requirements.txt (the dependencies), -export / -jax / -tensorboard (an extra on top), -infer (torch-free: the
infer extra and the dependencies pyproject names torch-free), -dev (everything, plus the dev extra).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
HEADER = "# Generated from pyproject.toml by tools/requirements.py: edit pyproject.toml, then run it.\n"


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower()


def generate(pyproject: Path = ROOT / "pyproject.toml") -> Dict[str, str]:
    """File name -> content, from ``pyproject``."""
    import tomllib

    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    deps = data["project"]["dependencies"]
    extras = data["project"]["optional-dependencies"]
    torch_free = set(data["tool"]["asl"]["requirements"]["torch_free"])

    def lines(reqs):
        return "".join(f"{r}\n" for r in reqs)

    infer = [*extras["infer"], *(r for r in deps if _name(r) in torch_free)]
    return {
        "requirements.txt": HEADER + "# Training, validation and tagging with PyTorch.\n" + lines(deps),
        "requirements-export.txt": HEADER
        + "# export.py (ONNX and its onnxruntime check), on top of requirements.txt.\n"
        + lines(extras["export"]),
        "requirements-jax.txt": HEADER
        + "# asl.jax (the PyTorch side does not need it); CPU wheels.\n"
        + lines(extras["jax"]),
        "requirements-tensorboard.txt": HEADER
        + "# train.py --tensorboard, on top of requirements.txt.\n"
        + lines(extras["tensorboard"]),
        "requirements-infer.txt": HEADER + "# Tagging with an exported model.onnx: no PyTorch needed.\n" + lines(infer),
        "requirements-dev.txt": HEADER
        + "-r requirements.txt\n-r requirements-jax.txt\n-r requirements-export.txt\n-r requirements-tensorboard.txt\n"
        + lines(extras["dev"]),
    }


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, text in generate().items():
        path = ROOT / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            if check:
                stale.append(name)
            else:
                path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date with pyproject.toml: {', '.join(stale)} (run python tools/requirements.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
