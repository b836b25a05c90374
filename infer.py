"""Tag images with a trained checkpoint or an exported model.onnx: the official repository's ``infer.py`` command.

The command lives in the package, asl/infer.py (also installed as ``asl-infer``);
``python infer.py --help`` lists its flags and examples.
"""

from asl.infer import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
