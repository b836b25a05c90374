"""``export.py --format hf --output DIR``: a Hugging Face model folder that timm itself loads.

Written through timm's own ``save_for_hf``: ``DIR/model.safetensors`` and ``DIR/config.json``
(``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg`` with the input size, mean,
std and interpolation validation uses), plus this package's fields under ``asl`` (task, per-class
thresholds, head, the loss and recipe, the metric the checkpoint was chosen by, the version) and
``DIR/README.md``, a model card. For a model with timm's own head,
``timm.create_model("local-dir:DIR", pretrained=True)`` builds the same network with the same
logits; an ML-Decoder model's head is not timm's, which ``config.json`` (``asl.timm_loads``) and the
card say: it loads with this package.

The folder is new (or an earlier such export, with ``--overwrite``): timm writes into a temporary
folder beside it, and each file is then moved in whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import Config
from .errors import ConfigError

__all__ = ["export_hf", "model_card", "HF_FILES"]

HF_FILES = ("model.safetensors", "config.json", "README.md")


def export_hf(cfg: Config) -> Dict[str, Any]:
    """Write ``cfg.model_path`` as a Hugging Face model folder at ``cfg.output`` (module docstring).

    Returns:
        dict with ``output`` (the folder), ``config`` (config.json's content), ``timm_loads``.
    """
    from .opening import is_onnx, open_configured
    from .outputs import HF_EXPORT
    from .rundir import claim, file_sources

    if not cfg.model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    if not cfg.output:
        raise ConfigError("pass --output DIR: --format hf writes a model folder")
    if is_onnx(cfg.model_path):
        raise ConfigError(f"--format hf exports a PyTorch checkpoint; {cfg.model_path} is an ONNX file")
    if cfg.push_to_hub:
        from .hub import check_repo_id

        check_repo_id(cfg.push_to_hub, "--push-to-hub")
    sources = file_sources(model_path=cfg.model_path, class_names=cfg.class_names)
    with claim(cfg.output, HF_EXPORT, overwrite=cfg.overwrite, sources=sources) as out:
        opened = open_configured(cfg)
        result = _write(opened, out)
    if cfg.push_to_hub:
        result["url"] = push_folder(Path(cfg.output), cfg.push_to_hub, public=cfg.public)
    return result


def push_folder(folder: Path, repo_id: str, public: bool = False) -> str:
    """Upload the folder :func:`export_hf` wrote, as it is (its card and ``asl`` fields included),
    to ``repo_id`` with the user's Hugging Face login; the repository is created private unless
    ``public``. timm's ``push_to_hf_hub`` would save the weights again and write a card of its own:
    the folder checked here is the folder uploaded. Returns the repository's URL."""
    from huggingface_hub import create_repo, upload_folder

    try:
        url = create_repo(repo_id, private=not public, exist_ok=True)
        upload_folder(
            repo_id=repo_id, folder_path=str(folder), allow_patterns=list(HF_FILES), commit_message="Add model"
        )
    except (OSError, ValueError) as e:  # HTTP and login errors
        raise ConfigError(
            f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); the "
            f"folder {folder} is written: upload it later with huggingface-cli upload"
        ) from None
    print(f"{folder} -> {url} ({'public' if public else 'private'})")
    return str(url)


def _asl_fields(opened) -> Dict[str, Any]:
    from . import __version__

    ckpt = opened.checkpoint or {}
    config = opened.config or {}
    recipe = {
        k: config.get(k)
        for k in ("dataset", "loss", "gamma_neg", "gamma_pos", "clip", "optimizer", "lr", "epochs", "image_size")
        if config.get(k) is not None
    }
    head = ckpt.get("head") or "linear"
    return {
        "task": opened.task,
        "thresholds": opened.thresholds,
        "head": head,
        "timm_loads": head == "linear",
        "recipe": recipe,
        "start": config.get("init_checkpoint") or (config.get("model_name") if config.get("pretrained") else None),
        "chosen_by": {k: ckpt[k] for k in ("mAP", "epoch", "selected") if ckpt.get(k) is not None},
        "version": __version__,
        "config": opened.config,  # the training config: validate.py's defaults (dataset, split), as for the .pth
    }


def _save_own(opened, folder: Path, model_config: Dict[str, Any], data_config: Dict[str, Any]) -> None:
    """``model.safetensors`` and a timm-shaped ``config.json`` for a model timm cannot build."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in opened.net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    pretrained_cfg = {**data_config, "input_size": list(data_config["input_size"]), "num_classes": opened.num_classes}
    config = {
        "architecture": opened.model_name,
        "num_classes": opened.num_classes,
        "pretrained_cfg": pretrained_cfg,
        **model_config,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _per_class_ap(opened) -> Optional[Dict[str, Any]]:
    """The run's ``per_class_ap.json`` beside the checkpoint (its last epoch's AP per class, of the
    weights the checkpoint keeps), or None."""
    path = Path(opened.path).parent / "per_class_ap.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        names, ap = (
            rec["class_names"],
            rec["ap_ema"] if (opened.checkpoint or {}).get("selected") == "ema" else rec["ap"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ap or list(names) != list(opened.class_names):
        return None
    scored = sorted(((float(a), n) for n, a in zip(names, ap) if a is not None), reverse=True)
    return {"epoch": rec.get("epoch"), "best": scored[:5], "worst": scored[::-1][:5]}


def _write(opened, out: Path) -> Dict[str, Any]:
    from timm.models import save_for_hf

    fields = _asl_fields(opened)
    fields["per_class_ap"] = _per_class_ap(opened)
    size = opened.image_size
    data_config = {
        "input_size": (3, size, size),
        "mean": tuple(opened.mean),
        "std": tuple(opened.std),
        "interpolation": "bilinear",  # validation's squish Resize((S, S))
        "crop_pct": 1.0,
    }
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=out))
    try:
        model_config = {"label_names": list(opened.class_names), "asl": fields}
        if fields["timm_loads"]:
            save_for_hf(
                opened.net, str(tmp), model_config=model_config, safe_serialization=True, data_config=data_config
            )
        else:  # not a timm model (an ML-Decoder head): timm's layout, written here, for this package to load
            _save_own(opened, tmp, model_config, data_config)
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "README.md").write_text(model_card(opened, config, fields), encoding="utf-8")
        for name in HF_FILES:  # each file whole: a rename inside one folder
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    how = f"timm loads it: local-dir:{out}" if fields["timm_loads"] else "timm cannot build its head"
    task = opened.task.replace("_", "-")
    print(
        f"{opened.model_name} ({opened.num_classes} classes, {size} px, {task}) -> {out} ({', '.join(HF_FILES)}; {how})"
    )
    return {"output": out, "config": config, "timm_loads": fields["timm_loads"]}


def _ap_lines(per_class: Optional[Dict[str, Any]]) -> str:
    if not per_class:
        return ""
    row = lambda pairs: ", ".join(f"`{n}` {100 * a:.1f}" for a, n in pairs)  # noqa: E731
    return (
        f"Per-class AP (validation, epoch {per_class['epoch']}): best {row(per_class['best'])}; "
        f"worst {row(per_class['worst'])}.\n"
    )


def _fold(names: List[str], limit: int = 40) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (
        f", ... ({len(names) - limit} more, all in `config.json`'s `label_names`)" if len(names) > limit else ""
    )


def model_card(opened, config: Dict[str, Any], fields: Dict[str, Any]) -> str:
    """The folder's README.md: what it tags, its classes, how it was chosen and trained, how to load it."""
    task = opened.task.replace("_", "-")
    recipe = fields["recipe"]
    conf = opened.config or {}
    data = (
        f" (`{conf['data_root']}`, validated on its {conf.get('val_split') or 'evaluation'} split)"
        if conf.get("data_root")
        else ""
    )
    loss = (
        f"{recipe.get('loss', 'not recorded')} (gamma- {recipe.get('gamma_neg', '-')}, "
        f"gamma+ {recipe.get('gamma_pos', '-')}, clip {recipe.get('clip', '-')})"
    )
    chosen = fields["chosen_by"]
    rows = "".join(f"| {k} | {v:.2f} |\n" if isinstance(v, float) else f"| {k} | {v} |\n" for k, v in chosen.items())
    load_timm = (
        '```python\nimport timm, torch\nmodel = timm.create_model("local-dir:PATH", pretrained=True).eval()\n'
        'labels = model.pretrained_cfg["label_names"]\n'
        + (
            "probs = torch.softmax(model(images), 1)          # single-label: one class per picture\n"
            if opened.task == "single_label"
            else "probs = torch.sigmoid(model(images))             # multi-label: each class on its own\n"
        )
        + "```\n"
        if fields["timm_loads"]
        else f"timm cannot build this model's {fields['head']} head: load it with this package (below).\n"
    )
    thresholds = (
        "Per-class thresholds calibrated on its validation split are in `config.json` (`asl.thresholds`); "
        "they are in-sample for that split."
        if fields["thresholds"]
        else "No calibrated thresholds: "
        + ("it predicts its top class." if task == "single-label" else "tag with one threshold (e.g. 0.7).")
    )
    return f"""---
library_name: timm
tags:
- image-classification
- {task}
- asymmetric-loss
---
# {opened.model_name}: a {task} image tagger

A `{config.get("architecture")}` trained with the Asymmetric Loss toolkit; it tags a picture with
{"one of" if task == "single-label" else "any of"} {opened.num_classes} classes at {opened.image_size} px
(mean {list(opened.mean)}, std {list(opened.std)}, squish resize).

## Classes

{_fold(list(opened.class_names))}

## How it was chosen and trained

| | |
| --- | --- |
{rows}| dataset | {recipe.get("dataset", "not recorded")}{data} |
| loss | {loss} |
| schedule | {recipe.get("optimizer", "-")} lr {recipe.get("lr", "-")}, {recipe.get("epochs", "-")} epochs |
| start | {fields.get("start") or "from scratch"} |

{_ap_lines(fields.get("per_class_ap"))}
## Load it

With timm alone:

{load_timm}
With this package, validate.py, infer.py and export.py take the folder (`local-dir:PATH` or `PATH`):

```bash
python infer.py --model-path local-dir:PATH --pic-path photo.jpg
python validate.py DATA --model-path local-dir:PATH
```

## Limitations

- {thresholds}
- Scores were measured on the split named above only; a model trained on partially labelled data
  (Open Images) was scored on its labelled entries only.
"""
