"""Evaluate a checkpoint: mAP (official definition) and CP/CR/CF1/F_C/OP/OR/OF1.

Settings follow the checkpoint's own config when it has one, else the official
validate.py (COCO, 448 px, threshold 0.8; the defaults below); flags override both.
The checkpoint's classes are matched to the dataset's by name: the same classes in
another order are remapped, other names are an error.

    python validate.py --model-path runs/demo/best.pth
    python validate.py data/coco --dataset coco --model-path models_local/MS_COCO_TRresNet_L_448_86.6.pth
    python validate.py data/mytags --dataset tagged --model-path resnet18_state_dict.pth --model-name resnet18 \\
        --class-names data/mytags/classes.txt
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from asl import cli
from asl.checkpoint import load_checkpoint, match_classes, model_from_checkpoint, read_class_names, save_checkpoint
from asl.config import FIELDS, Config, check_values, from_dict, load_config
from asl.data.base import split_warnings
from asl.engine import amp_dtype_for, evaluate
from asl.errors import ConfigError
from asl.factory import dataset_from_config, loader_for
from asl.metrics import calibrate_thresholds, mAP, multilabel_metrics
from asl.models import SelectOutputs, check_image_size
from asl.runtime import cap_workers, writable_dir, writable_file

log = logging.getLogger("validate")
OFFICIAL_DEFAULTS = dict(dataset="coco", data_root=".", image_size=448, batch_size=16, workers=2)
OUTPUT_FILES = ("metrics.json", "scores.npy", "targets.npy", "calibrated.pth")


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
    """CP CR CF1 (the papers' harmonic mean) F_C (the official printout's mean per-class F1) OP OR OF1."""
    return "  ".join(f"{k} {m[k]:.2f}" for k in ("CP", "CR", "CF1", "F_C", "OP", "OR", "OF1"))


def main(argv=None) -> int:
    parser = cli.build_parser("validate.py", __doc__.rsplit("\n\n", 1)[0], cli.VALIDATE_FIELDS, positional_data=True,
                              defaults=Config(**OFFICIAL_DEFAULTS), notes={"output": "none: nothing is written"})
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    given = load_config(config_path, flags)
    check_values(given, cli.VALIDATE_FIELDS)  # before the checkpoint is even read
    model_path = given.model_path
    if not model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    output = flags.get("output")  # only where asked: never into the training run's folder by default
    if output:
        out = writable_dir(Path(output))
        for name in OUTPUT_FILES if given.calibrate else OUTPUT_FILES[:3]:
            writable_file(out / name, "--output", given.overwrite)
    elif given.calibrate:
        writable_file(Path(model_path).with_suffix(".calibrated.pth"), "--calibrate's checkpoint (beside the model)",
                      given.overwrite)
    ckpt = load_checkpoint(model_path)
    model, info = model_from_checkpoint(ckpt, flags.get("model_name"), path=model_path)
    names, named = info["class_names"], info["named"]
    if given.class_names:  # the outputs' names, in order: for files without names, or with wrong ones
        names, named = read_class_names(given.class_names, info["num_classes"]), True
    cfg = load_config(config_path, flags, base=base_config(ckpt, info))
    check_values(cfg, cli.VALIDATE_FIELDS)
    check_image_size(info["model_name"], cfg.image_size)
    cfg = cap_workers(cfg)
    if cfg.num_classes is not None and cfg.num_classes != info["num_classes"]:
        raise ConfigError(f"--num-classes {cfg.num_classes} but {model_path} has {info['num_classes']}")
    device = cli.resolve_device(cfg.device)
    ds = dataset_from_config(cfg, train=False, mean=info["mean"], std=info["std"])
    order = match_classes(names, ds.class_names, named, path=model_path)
    if order is not None:
        log.info("the checkpoint lists the dataset's classes in another order: outputs matched by name")
        model = SelectOutputs(model, order)
    if not named:
        log.warning("warning: %s has no class names; its outputs are taken in the dataset's order (pass "
                    "--class-names FILE to check them)", model_path)
    model.to(device)
    log.info("%s", ds.summary())
    for warning in split_warnings(None, ds):
        log.warning("warning: %s", warning)
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
        thr = calibrate_thresholds(targets, scores)  # in the dataset's class order
        cal = multilabel_metrics(targets, scores, thr)
        metrics["calibrated"] = cal
        print(f"calibrated per-class thresholds: {format_metrics(cal)}")
        per_output = np.empty_like(thr)
        per_output[order if order is not None else slice(None)] = thr  # back to the model's output order
        dest = Path(output) / "calibrated.pth" if output else Path(model_path).with_suffix(".calibrated.pth")
        save_checkpoint(dict(ckpt, thresholds=[float(t) for t in per_output]), dest)
        print(f"calibrated checkpoint -> {dest}")
    if output:
        out = Path(output)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
        np.save(out / "scores.npy", scores)
        np.save(out / "targets.npy", targets)
        print(f"metrics -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
