"""Evaluate a checkpoint: mAP (official definition) and CP/CR/CF1/OP/OR/OF1.

Settings follow the checkpoint's own config when it has one, else the official
validate.py (COCO, threshold 0.8); flags override both.

    python validate.py --model-path runs/demo/best.pth
    python validate.py data/coco --dataset coco --model-path models_local/MS_COCO_TRresNet_L_448_86.6.pth
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from asl import cli
from asl.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from asl.config import FIELDS, Config, from_dict, load_config
from asl.engine import amp_dtype_for, evaluate
from asl.errors import ConfigError
from asl.factory import dataset_from_config, loader_for
from asl.metrics import calibrate_thresholds, mAP, multilabel_metrics

log = logging.getLogger("validate")
OFFICIAL_DEFAULTS = dict(dataset="coco", data_root=".", image_size=448, batch_size=16, workers=2)


def base_config(ckpt: dict, info: dict) -> Config:
    """The checkpoint's training config, or the official validate.py defaults."""
    saved = ckpt.get("config")
    if isinstance(saved, dict):
        return from_dict({k: v for k, v in saved.items() if k in FIELDS and k not in ("output",)},
                         source="checkpoint config")
    cfg = Config(**OFFICIAL_DEFAULTS)
    if info.get("image_size"):
        cfg.image_size = int(info["image_size"])  # the file's, else the TResNet variant's official size
    return cfg


def format_metrics(m: dict) -> str:
    return "  ".join(f"{k} {m[k]:.2f}" for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"))


def main(argv=None) -> int:
    parser = cli.build_parser("validate.py", __doc__.split("\n\n")[0], cli.VALIDATE_FIELDS, positional_data=True)
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    model_path = load_config(config_path, flags).model_path
    if not model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    ckpt = load_checkpoint(model_path)
    model, info = model_from_checkpoint(ckpt, flags.get("model_name"), path=model_path)
    cfg = load_config(config_path, flags, base=base_config(ckpt, info))
    output = flags.get("output")  # only where asked: never into the training run's folder by default
    if cfg.num_classes is not None and cfg.num_classes != info["num_classes"]:
        raise ConfigError(f"--num-classes {cfg.num_classes} but {model_path} has {info['num_classes']}")
    device = cli.resolve_device(cfg.device)
    model.to(device)
    ds = dataset_from_config(cfg, train=False, mean=info["mean"], std=info["std"])
    if ds.num_classes != info["num_classes"]:
        raise ConfigError(f"{ds.name} has {ds.num_classes} classes, {model_path} {info['num_classes']}")
    log.info("%s", ds.summary())
    ev = evaluate(model, loader_for(ds, cfg, train=False, device=device), device,
                  amp_dtype=amp_dtype_for(device, cfg.amp))
    scores, targets = ev["scores"], ev["targets"]
    metrics = {"mAP": ev["mAP"], **multilabel_metrics(targets, scores, cfg.thre), "num_images": ev["num_images"],
               "bad_images": ev["bad_images"]}
    if (targets == -1).any():
        # ev["mAP"] already leaves unknown labels out; this is the official code's reading (-1 as negative).
        metrics["mAP_unknown_as_negative"] = mAP(targets, scores)
    metrics["per_class_ap"] = {n: (None if np.isnan(a) else float(100 * a))
                               for n, a in zip(ds.class_names, ev["per_class_ap"])}
    print(f"mAP {metrics['mAP']:.2f}  {format_metrics(metrics)}  "
          f"(threshold {cfg.thre}, {ev['num_images']} images, {ev['images_per_s']:.0f} img/s)")

    if cfg.calibrate:
        thr = calibrate_thresholds(targets, scores)
        cal = multilabel_metrics(targets, scores, thr)
        metrics["calibrated"] = cal
        print(f"calibrated per-class thresholds: {format_metrics(cal)}")
        dest = Path(output) / "calibrated.pth" if output else Path(model_path).with_suffix(".calibrated.pth")
        save_checkpoint(dict(ckpt, thresholds=[float(t) for t in thr]), dest)
        print(f"calibrated checkpoint -> {dest}")
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
        np.save(out / "scores.npy", scores)
        np.save(out / "targets.npy", targets)
        print(f"metrics -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
