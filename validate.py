"""Evaluate a checkpoint: mAP (official definition) and CP/CR/CF1/F_C/OP/OR/OF1.

Settings follow the checkpoint's own config when it has one, else the official
validate.py (COCO, the model's official size: 448 for TResNet-L/XL, 224 for M and others;
threshold 0.8; the defaults below); flags override both.
The checkpoint's classes are matched to the dataset's by name: the same classes in
another order are remapped, other names are an error.

    python validate.py --model-path runs/demo/best.pth
    python validate.py data/coco --dataset coco --model-path models_local/MS_COCO_TRresNet_L_448_86.6.pth
    python validate.py data/mytags --dataset tagged --model-path resnet18_state_dict.pth --model-name resnet18 \\
        --class-names data/mytags/classes.txt
"""

import sys

from asl import cli
from asl.validate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
