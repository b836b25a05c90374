"""Train a multi-label classifier with the Asymmetric Loss.

With no argument it trains the built-in demo (configs/demo.yaml) on the CPU.
Without --config, flags apply over configs/finetune.yaml, the fine-tuning base
for your own data (the defaults below), or over configs/demo.yaml when no
--dataset (or --dataset demo) is given. With --config, over that file.
A run writes into --output (default runs/<name of the data folder>), which must
be new or empty, or hold the run that --resume continues.

    python train.py
    python train.py --config configs/demo.yaml --loss bce --output runs/demo_bce
    python train.py data/mytags --dataset tagged --model-name resnet18 --epochs 20

The command line lives in the package (asl/train.py, also installed as ``asl-train``);
the run itself is ``asl.trainer.fit``.
"""

import sys

from asl import cli
from asl.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
