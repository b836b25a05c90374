"""Export a checkpoint to ONNX (with its metadata and a parity check against PyTorch).

    python export.py --model-path runs/demo/best.pth --output demo.onnx
    python infer.py --model-path demo.onnx --pic-path pics/

The command lives in the package (asl/export.py, also installed as ``asl-export``).
"""

from asl.export import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
