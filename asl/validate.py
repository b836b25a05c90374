"""Evaluate a checkpoint: mAP (official definition) and CP/CR/CF1/F_C/OP/OR/OF1.

An exported model.onnx (export.py) is run by onnxruntime on the same input tensors.
Settings follow the checkpoint's own config when it has one, else the official
validate.py (COCO, the model's official size: 448 for TResNet-L/XL, 224 for M and others;
threshold 0.8; the defaults below); flags override both.
The checkpoint's classes are matched to the dataset's by name: the same classes in
another order are remapped, other names are an error.

    python validate.py --model-path runs/demo/best.pth
    python validate.py data/coco --dataset coco --model-path models_local/MS_COCO_TRresNet_L_448_86.6.pth
    python validate.py data/mytags --dataset tagged --model-path resnet18_state_dict.pth --model-name resnet18 \\
        --class-names data/mytags/classes.txt

The ``validate.py`` command; installed as ``asl-validate``, also ``python -m asl.validate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import cli
from .checks import cap_workers, check_dataset_options, resolve_dataset, resolve_device
from .config import (
    FIELDS,
    VALIDATE,
    Config,
    check_num_classes,
    check_values,
    fields_for,
    from_dict,
    load_config,
)
from .errors import ConfigError, DataError
from .opening import OpenedModel, is_onnx, open_model
from .outputs import VALIDATION
from .rundir import check_apart, check_folder, check_output_file, claim, config_sources
from .zoo import OFFICIAL_VALIDATE, zoo_image_size

log = logging.getLogger(__name__)

CALIBRATED_BESIDE = "--calibrate's checkpoint (beside the model)"


@dataclass(frozen=True)
class Validation:
    """What :func:`resolve_validation` settled before any data is read.

    Attributes:
        cfg: the layered config it runs with.
        given: what the command line set (None where it left a field unset).
        model: the opened checkpoint or ONNX model, at ``cfg``'s input size.
    """

    cfg: Config
    given: Config
    model: OpenedModel


@dataclass
class Scores:
    """What :func:`score` measured.

    Attributes:
        dataset: the evaluated dataset.
        order: the model's outputs in the dataset's class order (None: the same order).
        evaluation: ``asl.metrics.evaluation_result``'s dict.
        metrics: ``metrics.json``'s dict.
    """

    dataset: Any
    order: Optional[List[int]]
    evaluation: Dict[str, Any]
    metrics: Dict[str, Any]


def base_config(saved: Optional[Dict[str, Any]], image_size: int, dataset: Optional[str] = None) -> Config:
    """The training config a model file carries, or the official validate.py defaults (``OFFICIAL_VALIDATE``).

    Args:
        saved: the file's training config, or None.
        image_size: the model's input side (for the official defaults).
        dataset: the dataset asked for (``--dataset``), when given: the file's options of another
            dataset described its training data and are dropped.
    """
    from .data import DATASET_OPTIONS, DATASETS

    if isinstance(saved, dict):
        keep = {k: v for k, v in saved.items() if k in FIELDS and k != "output"}
        if dataset is not None and dataset != keep.get("dataset"):
            keep = {k: v for k, v in keep.items() if k not in DATASET_OPTIONS or k in DATASETS[dataset].options}
        return from_dict(keep, source="checkpoint config")
    return Config(**OFFICIAL_VALIDATE, image_size=image_size)


def report_headline(metrics: Dict[str, Any], thre: float) -> Dict[str, Any]:
    """The report's headline table: mAP, the threshold metrics, the image count."""
    head = {"mAP": metrics["mAP"], **{f"{k} (at {thre})": metrics[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}}
    if "calibrated" in metrics:
        head.update({f"{k} (calibrated)": metrics["calibrated"][k] for k in ("CF1", "OF1")})
    head["images"] = metrics["num_images"]
    return head


def format_metrics(m: dict) -> str:
    """CP CR CF1 (the papers' harmonic mean) F_C (the official printout's mean per-class F1) OP OR OF1."""
    return "  ".join(f"{k} {m[k]:.2f}" for k in ("CP", "CR", "CF1", "F_C", "OP", "OR", "OF1"))


def validate(config_path: Optional[str], flags: Dict[str, Any]) -> Dict[str, Any]:
    """Evaluate the checkpoint a command line names; print and return its metrics.

    :func:`resolve_validation`, then ``--output`` is claimed (:func:`asl.rundir.claim`: apart
    from the data and the model, a new folder or an earlier validation's, locked; removed again
    when the command fails), then :func:`score`, :func:`calibrate` when asked, :func:`write_outputs`.

    Returns:
        the metrics dict (``metrics.json``): ``mAP``, CP ... OF1, ``num_images``, ``per_class_ap``,
        ``calibrated`` when asked.
    """
    v = resolve_validation(config_path, flags)
    output = v.given.output
    owned = claim(output, VALIDATION, overwrite=v.given.overwrite, sources=config_sources(v.cfg)) if output else None
    with owned or contextlib.nullcontext():
        scored = score(v)
        marked = None  # the per-class thresholds the report marks, in the dataset's class order
        if v.model.thresholds is not None:
            marked = np.asarray(v.model.thresholds, np.float32)[_picked(scored.order)]
        if v.cfg.calibrate:
            marked = calibrate(v, scored)
        if v.given.write_prior:
            write_prior(scored, Path(v.given.write_prior))
        if output:
            write_outputs(v, scored, Path(output), marked)
    return scored.metrics


def _picked(order: Optional[Sequence[int]]):
    return order if order is not None else slice(None)


def _check_outputs(given: Config) -> None:
    """The outputs a command line asks for, before the checkpoint is read: ``--output`` (apart
    from the inputs, a new folder or an earlier validation's), or the calibrated copy beside the
    model."""
    if given.output:  # only where asked: never into the training run's folder by default
        out = Path(given.output)
        check_apart("--output", out, config_sources(given), folder=True, files=[out / n for n in VALIDATION.files])
        check_folder(out, VALIDATION, given.overwrite)
    elif given.calibrate:
        dest = Path(given.model_path).with_suffix(".calibrated.pth")
        check_apart(CALIBRATED_BESIDE, dest, config_sources(given))
        check_output_file(dest, CALIBRATED_BESIDE, given.overwrite, "checkpoint")
    if given.write_prior:
        check_apart("--write-prior", given.write_prior, config_sources(given))
        check_output_file(given.write_prior, "--write-prior", given.overwrite, "prior_csv")
    if given.calibrate and is_onnx(given.model_path):
        raise ConfigError(
            "--calibrate writes a calibrated copy of a PyTorch checkpoint: run it on the .pth, then export that copy"
        )


def resolve_validation(config_path: Optional[str], flags: Dict[str, Any]) -> Validation:
    """The model and the config it is validated with, checked; nothing read but the model file,
    nothing written.

    Settings are layered: the file's training config (else the official defaults) <-
    ``--config`` <- flags; ``--dataset auto`` is told from the folder, then read as if named.
    """
    given = load_config(config_path, flags)  # what the command line sets; None where it leaves unset
    check_values(given, fields_for(VALIDATE))  # before the checkpoint is even read
    if not given.model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    _check_outputs(given)
    model = open_model(
        given.model_path,
        given.model_name,
        given.image_size,
        given.class_names,
        None,
        given.device,
        given.num_of_groups,
        given.decoder_embedding,
        task=given.task,
    )
    if model.task == "single_label" and (given.calibrate or given.write_prior):
        raise ConfigError(
            f"{'--calibrate' if given.calibrate else '--write-prior'} applies to multi-label models (per-class "
            f"thresholds, a class prior); {given.model_path} is single-label: it predicts its top class"
        )
    base = base_config(model.config, model.image_size)
    cfg = load_config(config_path, flags, base=base)
    if cfg.dataset == "auto":  # told from the folder, then as if named on the command line
        flags = {**flags, "dataset": resolve_dataset(cfg.data_root)}
        cfg = load_config(config_path, flags, base=base)
    if cfg.dataset != base.dataset:  # scored on another dataset than it was trained on
        cfg = load_config(config_path, flags, base=base_config(model.config, model.image_size, cfg.dataset))
    if cfg.image_size is None:
        cfg = dataclasses.replace(cfg, image_size=model.image_size)
    cfg = dataclasses.replace(cfg, task=model.task)
    _warn_about_size(cfg, given, model)
    if cfg.dataset == "coco" and given.ann_file and not given.val_ann_file and given.val_split is None:
        cfg = dataclasses.replace(cfg, val_split="all")  # the file named here is scored whole
    check_values(cfg, fields_for(VALIDATE))
    check_dataset_options(cfg)
    model = dataclasses.replace(model.at_size(cfg.image_size), device=cfg.device)
    cfg = cap_workers(cfg)
    check_num_classes(cfg.num_classes, model.num_classes, given.model_path)
    if model.kind == "pytorch":
        resolve_device(cfg.device)  # a device that is not there: one line before any data is read
    _check_data(cfg, given.model_path, from_flags="data_root" in flags)
    return Validation(cfg, given, model)


def _warn_about_size(cfg: Config, given: Config, model: OpenedModel) -> None:
    """Say when the input size differs from the one the model was trained or scored at, or is only
    the model's default."""
    expected = zoo_image_size(model.path) or model.own_size
    if expected and cfg.image_size != expected:
        log.warning(
            "warning: validating at %d px, but %s %s at %d px: the number will differ from that one "
            "(pass --image-size %d to measure it)",
            cfg.image_size,
            model.path,
            "was scored by the model zoo" if zoo_image_size(model.path) else "was trained",
            expected,
            expected,
        )
    if model.size_from == "default" and given.image_size is None and not (model.config or {}).get("image_size"):
        log.warning(
            "warning: %s names no input size: validating at %d px, the default of %s (pass --image-size "
            "to use the size it was trained at)",
            model.path,
            cfg.image_size,
            model.model_name,
        )


def _check_data(cfg: Config, model_path: str, from_flags: bool) -> None:
    """The data folder is there: validation reads a dataset, it never generates one (the demo)."""
    if not Path(cfg.data_root).exists():
        where = "" if from_flags else f" (named by {model_path}'s config: pass the data folder)"
        raise DataError(f"data folder not found: {cfg.data_root}{where}")
    if cfg.dataset == "demo":
        from .data.demo import check_demo_folder

        check_demo_folder(Path(cfg.data_root))  # a user's folder read as the demo: say --dataset tagged


def score(v: Validation) -> Scores:
    """Score the model on the config's evaluation split: read the data, match the classes by name,
    evaluate (PyTorch or onnxruntime, on the same input tensors), print the metrics line."""
    from .builders import dataset_from_config, loader_for
    from .classes import match_classes
    from .data.base import split_warnings
    from .metrics import labelled_metrics, mAP

    cfg, model = v.cfg, v.model
    device = resolve_device(cfg.device) if model.kind == "pytorch" else resolve_device("cpu")
    follow = model.class_names if model.named else None
    ds = dataset_from_config(cfg, train=False, mean=model.mean, std=model.std, class_order=follow)
    order = match_classes(model.class_names, ds.class_names, model.named, path=model.path, aliases=ds.class_aliases)
    if order is not None:
        log.info("the checkpoint lists the dataset's classes in another order: outputs matched by name")
    if not model.named:
        log.warning(
            "warning: %s has no class names; its outputs are taken in the dataset's order (pass "
            "--class-names FILE to check them)",
            model.path,
        )
    log.info(
        "validating %s at %d px (%s), mean %s, std %s",
        model.model_name or model.path,
        cfg.image_size,
        "--image-size" if v.given.image_size else "the default" if model.size_from == "default" else "the checkpoint's",
        tuple(round(float(m), 4) for m in model.mean),
        tuple(round(float(s), 4) for s in model.std),
    )
    log.info("%s", ds.summary())
    for warning in split_warnings(None, ds):
        log.warning("warning: %s", warning)
    loader = loader_for(ds, cfg, train=False, device=device)
    ev = model.evaluate(loader, amp=cfg.amp, order=order)
    if model.task == "single_label":
        return Scores(ds, order, ev, _single_label_metrics(ev, ds.class_names))
    scores, targets, labelled = ev["scores"], ev["targets"], ev["labelled"]
    metrics = {
        "mAP": ev["mAP"],
        **labelled_metrics(labelled, cfg.thre),
        "num_images": ev["num_images"],
        "bad_images": ev["bad_images"],
    }
    if scores is not None and not labelled.complete:
        # ev["mAP"] already leaves unknown labels out; this is the official code's reading (-1 as negative).
        metrics["mAP_unknown_as_negative"] = mAP(targets, scores)
    metrics["classes_scored"] = _say_which_classes_count(labelled.positives(), ds.class_names)
    metrics["per_class_ap"] = {
        n: (None if np.isnan(a) else float(100 * a)) for n, a in zip(ds.class_names, ev["per_class_ap"])
    }
    print(
        f"mAP {metrics['mAP']:.2f}  {format_metrics(metrics)}  "
        f"(threshold {cfg.thre}, {ev['num_images']} images, {ev['images_per_s']:.0f} img/s)"
    )
    return Scores(ds, order, ev, metrics)


def _single_label_metrics(ev: Dict[str, Any], class_names) -> Dict[str, Any]:
    """validate.py's metrics of a single-label model, printed: top-1, top-5, macro-F1, balanced
    accuracy (percent) and the one-vs-rest mAP of its softmax scores; per-class accuracy."""
    truth, pred = ev["truth"], ev["top"][:, 0]
    counts = np.bincount(truth[truth >= 0], minlength=len(class_names))
    hits = np.bincount(truth[(truth >= 0) & (pred == truth)], minlength=len(class_names))
    metrics = {
        "task": "single_label",
        **{k: ev[k] for k in ("top1", "top5", "macro_f1", "balanced_accuracy")},
        "mAP": None if ev["mAP_is_top1"] else ev["mAP"],
        "num_images": ev["num_images"],
        "bad_images": ev["bad_images"],
        "per_class_accuracy": {
            n: (None if c == 0 else float(100 * h / c)) for n, c, h in zip(class_names, counts, hits)
        },
    }
    m_ap = "" if metrics["mAP"] is None else f"  mAP {metrics['mAP']:.2f}"
    print(
        f"top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  macro-F1 {metrics['macro_f1']:.2f}  "
        f"balanced accuracy {metrics['balanced_accuracy']:.2f}{m_ap}  ({ev['num_images']} images, "
        f"{ev['images_per_s']:.0f} img/s)"
    )
    return metrics


def _say_which_classes_count(positives: np.ndarray, class_names) -> int:
    """The classes the mAP averages: those with a labelled positive in the split (Open Images'
    rule: the others are left out, and counted); a class with fewer than 5 labelled positives is
    named, its AP being a coarse number. Returns how many are scored.

    Args:
        positives: (C,) labelled positives per class."""
    scored = int((positives > 0).sum())
    if scored < len(class_names):
        log.info(
            "%d of %d classes have no positive in this split: left out of the mAP",
            len(class_names) - scored,
            len(class_names),
        )
    few = [class_names[k] for k in np.flatnonzero((positives > 0) & (positives < 5))]
    if few:
        log.warning(
            "warning: %d classes have fewer than 5 labelled positives, so their AP moves in large steps: %s%s",
            len(few),
            ", ".join(few[:5]),
            ", ..." if len(few) > 5 else "",
        )
    return scored


def calibrate(v: Validation, scored: Scores) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on these scores (added to the metrics
    as ``calibrated``), saved into a copy of the checkpoint (``--output``'s ``calibrated.pth``,
    else beside the model). Returns them in the dataset's class order."""
    from .checkpoint import save_checkpoint, with_thresholds
    from .metrics import labelled_metrics, labelled_thresholds

    labelled = scored.evaluation["labelled"]
    thr = labelled_thresholds(labelled)  # in the dataset's class order
    cal = labelled_metrics(labelled, thr)
    scored.metrics["calibrated"] = cal
    print(f"calibrated per-class thresholds: {format_metrics(cal)}")
    per_output = np.empty_like(thr)
    per_output[_picked(scored.order)] = thr  # back to the model's output order
    output, model = v.given.output, v.model
    dest = Path(output) / "calibrated.pth" if output else Path(model.path).with_suffix(".calibrated.pth")
    save_checkpoint(
        with_thresholds(
            model.checkpoint,
            per_output,
            model_name=model.model_name,
            class_names=model.class_names,
            image_size=v.cfg.image_size,
            mean=model.mean,
            std=model.std,
        ),
        dest,
    )
    print(f"calibrated checkpoint -> {dest}")
    return thr


def write_prior(scored: Scores, dest: Path) -> None:
    """The class prior of the scored split: each class's mean score over every picture, whatever its
    labels (CSL's ``ComputePrior``), as ``Classes,avg_pred`` (``--prior-file`` of ``--unknown-labels
    selective``)."""
    from .classes import prior_csv
    from .files import atomic_write

    prior = scored.evaluation["class_mean"]
    atomic_write(dest, prior_csv(scored.dataset.class_names, prior))
    print(f"class prior ({len(prior)} classes, mean {float(np.nanmean(prior)):.4f}) -> {dest}")


def write_outputs(v: Validation, scored: Scores, out: Path, marked: Optional[np.ndarray]) -> None:
    """``metrics.json``, ``report.html`` and the scores into ``out``: ``scores.npy`` and ``targets.npy``
    (N, C), -1 at the unknown labels, where N x C is at most ``asl.labelled.DENSE_LIMIT``, else only
    the labelled entries (``labelled_scores.npz``, :class:`asl.labelled.LabelledScores`)."""
    from .files import atomic_write
    from .labelled import LABELLED_FILE
    from .report import write_report

    scores, targets, labelled = (scored.evaluation[k] for k in ("scores", "targets", "labelled"))
    atomic_write(out / "metrics.json", json.dumps(scored.metrics, indent=1))
    if v.model.task == "single_label":
        from .report import write_single_label_report

        if scores is not None:  # softmax probabilities (N, C); the class of each image (N,)
            atomic_write(out / "scores.npy", writer=lambda f: np.save(f, scores))
        atomic_write(out / "targets.npy", writer=lambda f: np.save(f, scored.evaluation["truth"]))
        write_single_label_report(
            out / "report.html",
            truth=scored.evaluation["truth"],
            top=scored.evaluation["top"],
            top_scores=scored.evaluation["top_scores"],
            class_names=scored.dataset.class_names,
            image_paths=scored.dataset.paths,
            title=f"{v.model.model_name or Path(v.model.path).name} on {scored.dataset.name}",
            headline={k: scored.metrics[k] for k in ("top1", "top5", "macro_f1", "balanced_accuracy")},
        )
        print(f"metrics -> {out / 'metrics.json'}, report -> {out / 'report.html'}")
        return
    if scores is not None:
        atomic_write(out / "scores.npy", writer=lambda f: np.save(f, scores))
        atomic_write(out / "targets.npy", writer=lambda f: np.save(f, targets))
    else:
        labelled.save(out / LABELLED_FILE, atomic_write)
    write_report(
        out / "report.html",
        labelled=labelled,
        class_names=scored.dataset.class_names,
        image_paths=scored.dataset.paths,
        per_class_ap=scored.evaluation["per_class_ap"],
        title=f"{v.model.model_name or Path(v.model.path).name} on {scored.dataset.name}",
        headline=report_headline(scored.metrics, v.cfg.thre),
        thresholds=marked,
    )
    print(f"metrics -> {out / 'metrics.json'}, report -> {out / 'report.html'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.build_parser(
        cli.prog("validate"),
        __doc__.rsplit("\n\n", 1)[0],
        cli.VALIDATE_FIELDS,
        positional_data=True,
        defaults=Config(**OFFICIAL_VALIDATE),
        notes={
            "output": "none: nothing is written",
            "model_name": "the checkpoint's",
            "image_size": "the checkpoint's, else the model's official size (TResNet-M 224, L/XL 448)",
        },
        command="validate",
    )
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    validate(config_path, flags)
    return 0


def console() -> None:
    """The ``asl-validate`` entry point."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    console()
