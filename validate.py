"""Evaluate a checkpoint (mAP, CP/CR/CF1/F_C/OP/OR/OF1): the official repository's ``validate.py`` command.

The command lives in the package, asl/validate.py (also installed as ``asl-validate``);
``python validate.py --help`` lists its flags and examples.
"""

from asl.validate import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
