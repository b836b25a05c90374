"""Train a multi-label classifier with the Asymmetric Loss: the official repository's ``train.py`` command.

The command lives in the package, asl/train.py (also installed as ``asl-train``);
``python train.py --help`` lists its flags and examples.
"""

import sys

from asl import cli

main = cli.command("train")  # imported when called: a missing PyTorch is one error line

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
