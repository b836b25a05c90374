"""Tag images with a trained checkpoint or an exported model.onnx: the official repository's ``infer.py`` command.

The command lives in the package, asl/infer.py (also installed as ``asl-infer``);
``python infer.py --help`` lists its flags and examples.
"""

import sys

from asl import cli
from asl.infer import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
