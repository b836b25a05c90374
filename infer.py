"""Tag images with a trained checkpoint.

    python infer.py --model-path runs/demo/best.pth --pic-path pics/demo.png
    python infer.py --model_path MS_COCO_TRresNet_L_448_86.6.pth --pic_path pics/ --json
    python infer.py --model-path runs/demo/best.pth --pic-path 'photos/*.jpg' --top-k 5 --save-image out.png

Threshold: --th, else the checkpoint's calibrated per-class thresholds
(validate.py --calibrate), else the official 0.7 (0.995 for --dataset_type OpenImages).
A plain timm state dict runs with --model-name (class count from its head) and
--class-names FILE (else the classes are numbered).
"""

import sys

from asl import cli
from asl.infer import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli.run(main))
