"""Export a checkpoint to ONNX (with its metadata and a parity check against PyTorch).

    python export.py --model-path runs/demo/best.pth --output demo.onnx
    python infer.py --model-path demo.onnx --pic-path pics/

The command lives in the package (asl/export.py, also installed as ``asl-export``).
"""

import sys

from asl import cli

main = cli.command("export")  # imported when called: a missing PyTorch is one error line

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
