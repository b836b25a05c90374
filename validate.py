"""Evaluate a checkpoint (mAP, CP/CR/CF1/F_C/OP/OR/OF1): the official repository's ``validate.py`` command.

The command lives in the package, asl/validate.py (also installed as ``asl-validate``);
``python validate.py --help`` lists its flags and examples.
"""

import sys

from asl import cli

main = cli.command("validate")  # imported when called: a missing PyTorch is one error line

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
