"""The base training configs, shipped with the package: demo.yaml (``python train.py`` with no
argument) and finetune.yaml (``train.py DATA --dataset X`` without --config)."""
