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

The ``train.py`` command; installed as ``asl-train``, also ``python -m asl.train``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from . import cli
from .config import DEMO_CONFIG, FIELDS, FINETUNE_CONFIG, Config, load_config


def train_help_notes() -> Tuple[Config, Dict[str, str]]:
    """(the fine-tuning base, help notes giving the demo's value where it differs)."""
    fine, demo = load_config(str(FINETUNE_CONFIG)), load_config(str(DEMO_CONFIG))
    notes = {
        name: f"{getattr(fine, name)!r}; the demo: {getattr(demo, name)!r}"
        for name in FIELDS
        if getattr(fine, name) != getattr(demo, name)
    }
    notes["output"] = "runs/<name of the data folder>; the demo: 'runs/demo'"
    return fine, notes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse a training command line, run :func:`asl.trainer.fit`, report where the result is."""
    defaults, notes = train_help_notes()
    parser = cli.build_parser(
        cli.prog("train"),
        __doc__.rsplit("\n\n", 1)[0],
        cli.TRAIN_FIELDS,
        positional_data=True,
        defaults=defaults,
        notes=notes,
        command="train",
    )
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    from .checks import prepare_training
    from .trainer import fit  # PyTorch, imported here: without it the command says what to install

    cfg = prepare_training(config_path, flags)  # every value, name and file checked first
    if cfg.push_to_hub:
        from .hub import check_repo_id

        check_repo_id(cfg.push_to_hub, "--push-to-hub")
    result = fit(cfg, checked=True)
    if result.stopped_by:
        print(f"stopped by {result.stopped_by}; resume with --resume {result.last_checkpoint}", file=sys.stderr)
    elif result.is_main and result.best_checkpoint is not None and result.best.get("epoch") is not None:
        print(
            f"best mAP {result.best['mAP']:.2f} at epoch {result.best['epoch']} ({result.best['selected']} "
            f"weights) -> {result.best_checkpoint}"
        )
        if cfg.push_to_hub:  # the best weights as a Hugging Face folder beside them, uploaded
            import dataclasses

            from .hf import export_hf

            hf = Path(result.best_checkpoint).parent / "hf"
            export_hf(dataclasses.replace(cfg, model_path=str(result.best_checkpoint), output=str(hf), overwrite=True))
    return result.exit_code


def console() -> None:
    """The ``asl-train`` entry point."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    console()
