"""Train a multi-label classifier with the Asymmetric Loss: the official repository's ``train.py`` command.

The command lives in the package, asl/train.py (also installed as ``asl-train``);
``python train.py --help`` lists its flags and examples.
"""

from asl.train import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
