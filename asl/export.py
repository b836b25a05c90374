"""Export a checkpoint to ONNX, with the metadata a runtime needs and a parity check.

    python export.py --model-path runs/demo/best.pth --output demo.onnx
    python export.py --model-path models_local/MS_COCO_TRresNet_L_448_86.6.pth --output tresnet_l.onnx --dynamic-batch
    python infer.py --model-path demo.onnx --pic-path pics/            # onnxruntime: no torch needed

Our checkpoints and the official ones (TResNet M/L/XL, the Open Images bottleneck head, any timm
backbone trained here) export through PyTorch's TorchScript-based exporter (as timm's
``onnx_export.py``), opset 17 by default, batch 1 or ``--dynamic-batch``, float32 or ``--fp16``
weights (inputs and outputs stay float32), the sigmoid included (``--no-sigmoid``: logits). The
model's ``metadata_props`` hold the class names, input size, mean / std, resize rule and, when
the checkpoint has them, the calibrated thresholds (``asl.predict.METADATA``). The graph has no
custom op (timm's TResNet uses BatchNorm where the official code had InPlaceABN), and the
anti-aliasing blur's reflect padding is rewritten as slices and a concatenation with the same
values, since TensorRT-style runtimes reject reflect ``Pad``. The file is written only after
onnxruntime has reproduced PyTorch's outputs on generated pictures (max |diff| printed; at most
1e-4 for float32, 1e-2 for float16), and atomically.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from . import cli
from .config import EXPORT, Config, check_values, fields_for, load_config
from .errors import ASLError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "ExportError", "main"]

TOLERANCE = {False: 1e-4, True: 1e-2}  # max |onnxruntime - PyTorch| of the outputs, float32 / float16 weights


class ExportError(ASLError):
    """The exported graph does not reproduce the PyTorch model (or breaks a graph rule)."""


def _explicit_reflect_pad(x, pad: int):
    """``F.pad(x, [pad] * 4, mode="reflect")`` built from slices and concatenations (no reflect Pad op)."""
    import torch

    if pad == 0:
        return x
    left = x[..., :, 1 : pad + 1].flip(-1) if pad > 1 else x[..., :, 1:2]
    right = x[..., :, -pad - 1 : -1].flip(-1) if pad > 1 else x[..., :, -2:-1]
    x = torch.cat([left, x, right], dim=-1)
    top = x[..., 1 : pad + 1, :].flip(-2) if pad > 1 else x[..., 1:2, :]
    bottom = x[..., -pad - 1 : -1, :].flip(-2) if pad > 1 else x[..., -2:-1, :]
    return torch.cat([top, x, bottom], dim=-2)


def _rewrite_blur(model) -> int:
    """Give every reflect-padded timm ``BlurPool2d`` an explicit padding; returns how many."""
    import torch.nn.functional as F
    from timm.layers.blur_pool import BlurPool2d

    count = 0
    for module in model.modules():
        if isinstance(module, BlurPool2d) and module.pad_mode == "reflect" and len(set(module.padding)) == 1:
            pad = module.padding[0]

            def forward(x, m=module, pad=pad):
                x = _explicit_reflect_pad(x, pad)
                channels = m.channels or x.shape[1]
                weight = m.filt if m.channels else m.filt.expand(channels, 1, m.filt_size, m.filt_size)
                return F.conv2d(x, weight, stride=m.stride, groups=channels)

            module.forward = forward
            count += 1
    return count


def _wrapped(model, sigmoid: bool, fp16: bool, single_label: bool = False):
    """The graph's module: the model, then its scores (sigmoid; softmax for a single-label model)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.half() if fp16 else model

        def forward(self, images):
            out = self.model(images.half() if fp16 else images).float()
            if not sigmoid:
                return out
            return torch.softmax(out, dim=1) if single_label else torch.sigmoid(out)

    return Exported().eval()


def sample_pictures(size: int, n: int = 4, seed: int = 0):
    """``n`` real-looking RGB pictures (smooth gradients, shapes, texture), PIL, ``size`` px."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pics = []
    for _ in range(n):
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        base = np.stack([np.sin(3 * xx + rng.random() * 6), np.cos(4 * yy + rng.random() * 6), xx * yy], -1)
        arr = ((base + 1) * 100 + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.integers(0, size, 2)
            w = int(rng.integers(size // 8, size // 2))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + w], fill=colour)
        pics.append(img)
    return pics


def graph_report(model_proto) -> Dict[str, Any]:
    """Ops of the graph, and what breaks the rules: custom domains, reflect padding."""
    from onnx import helper

    ops: Dict[str, int] = {}
    custom, reflect = [], []
    for node in model_proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            custom.append(f"{node.domain}::{node.op_type}")
        if node.op_type == "Pad":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("mode", b"constant") == b"reflect":
                reflect.append(node.name)
    return {"ops": ops, "custom": custom, "reflect_pads": reflect, "nodes": len(model_proto.graph.node)}


def export_onnx(cfg: Config) -> Dict[str, Any]:
    """Export ``cfg.model_path`` to ``cfg.output`` (:func:`_export_onnx`); a folder it creates for
    the output is removed again when it fails."""
    from .files import removed_on_error

    with removed_on_error(*([Path(cfg.output).parent] if cfg.output else [])):
        return _export_onnx(cfg)


def _export_onnx(cfg: Config) -> Dict[str, Any]:
    """Export ``cfg.model_path`` to ``cfg.output`` (see the module docstring): resolve and check,
    :func:`trace`, :func:`attach_metadata`, :func:`check_against_torch`, write atomically.

    Returns:
        ``{"output", "max_abs_diff", "graph": graph_report, "metadata", "blur_rewritten"}``.

    Raises:
        ASLError: bad input (one line), or :class:`ExportError` when onnxruntime disagrees.
    """
    dest = _check_export(cfg)
    from .files import atomic_write
    from .opening import open_configured

    opened = open_configured(cfg)
    blurs = _rewrite_blur(opened.net)
    net = _wrapped(opened.net, cfg.sigmoid, cfg.fp16, opened.task == "single_label")
    proto = trace(net, opened, cfg)
    meta = attach_metadata(proto, opened, cfg)
    report = graph_report(proto)
    if report["custom"] or report["reflect_pads"]:
        raise ExportError(
            f"the graph breaks the export rules: custom ops {report['custom'][:3]}, reflect pads "
            f"{report['reflect_pads'][:3]}"
        )
    data = proto.SerializeToString()
    diff = check_against_torch(data, net, opened, cfg, dest) if cfg.check else None
    atomic_write(dest, data)
    shape = "dynamic batch" if cfg.dynamic_batch else "batch 1"
    dtype = "float16" if cfg.fp16 else "float32"
    print(
        f"{opened.model_name} ({opened.num_classes} classes, {opened.image_size} px, {shape}, {dtype} weights, "
        f"{meta['output']}) -> {dest} "
        f"({len(data) / 2**20:.1f} MiB, {report['nodes']} nodes, no custom op, no reflect padding"
        + (f": {blurs} anti-aliasing blurs padded explicitly" if blurs else "")
        + ")"
    )
    return {"output": dest, "max_abs_diff": diff, "graph": report, "metadata": meta, "blur_rewritten": blurs}


def _check_export(cfg: Config) -> Path:
    """The command line's values and files, the destination (apart from the model, new or an
    earlier export), the exporter's packages. Returns the destination."""
    check_values(cfg, fields_for(EXPORT))
    if not cfg.model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    from .opening import is_onnx
    from .rundir import check_apart, check_output_file, file_sources

    dest = Path(cfg.output) if cfg.output else Path(cfg.model_path).with_suffix(".onnx")
    if dest.suffix.lower() != ".onnx":
        raise ConfigError(f"--output {dest}: an ONNX file ends in .onnx")
    check_apart("--output", dest, file_sources(model_path=cfg.model_path, class_names=cfg.class_names))
    check_output_file(dest, "--output", cfg.overwrite, "onnx")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"export needs onnx and onnxruntime ({e.name} is missing): pip install -r requirements-export.txt"
        ) from None
    if is_onnx(cfg.model_path):
        raise ConfigError(f"--model-path {cfg.model_path} is an ONNX model already: export a .pth checkpoint")
    return dest


def _output_name(cfg: Config) -> str:
    return "scores" if cfg.sigmoid else "logits"


def trace(net, opened, cfg: Config):
    """The ONNX graph of ``net`` (TorchScript exporter at ``--opset``; a dynamic batch axis with
    ``--dynamic-batch``), as an ``onnx.ModelProto``."""
    import onnx
    import torch

    example = torch.zeros(1, 3, opened.image_size, opened.image_size)
    buf = io.BytesIO()
    out = _output_name(cfg)
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice (timm's onnx_export.py uses it too) and tracer notes
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            try:
                torch.onnx.export(
                    net,
                    (example,),
                    buf,
                    dynamo=False,
                    opset_version=cfg.opset,
                    input_names=["images"],
                    output_names=[out],
                    do_constant_folding=True,
                    dynamic_axes={"images": {0: "batch"}, out: {0: "batch"}} if cfg.dynamic_batch else None,
                )
            except Exception as e:  # noqa: BLE001  (the exporter raises its own classes: an op with no form here)
                why = str(e).strip().splitlines()[0][:240] if str(e).strip() else ""
                raise ExportError(
                    f"{opened.model_name} cannot be exported at --opset {cfg.opset} "
                    f"({type(e).__name__}: {why}); try a newer opset (the default, 17, or up to 21)"
                ) from None
    return onnx.load_from_string(buf.getvalue())


def attach_metadata(proto, opened, cfg: Config) -> Dict[str, str]:
    """What tagging needs without the checkpoint, in the graph's ``metadata_props``: the model,
    classes, input size, normalisation, thresholds, training config. Returns them."""
    meta = {
        "asl_format": "1",
        "model_name": opened.model_name,
        "class_names": json.dumps(list(opened.class_names)),
        "image_size": str(opened.image_size),
        "mean": json.dumps(list(opened.mean)),
        "std": json.dumps(list(opened.std)),
        "resize": "pil_squish",
        "output": _output_name(cfg),
        "source": Path(cfg.model_path).name,
        "task": opened.task,
    }
    if opened.thresholds is not None:
        meta["thresholds"] = json.dumps([float(t) for t in opened.thresholds])
    if opened.config:  # the training config: validate.py's defaults (dataset, split, size), as for the .pth
        meta["config"] = json.dumps(opened.config, default=str)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return meta


def check_against_torch(data: bytes, net, opened, cfg: Config, dest: Path) -> float:
    """onnxruntime's outputs on generated pictures against PyTorch's; the largest difference.

    Raises:
        ExportError: onnxruntime cannot load the graph, or differs by more than ``TOLERANCE``.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    from .data.transforms import build_infer_transform
    from .predict import providers

    transform = build_infer_transform(opened.image_size, opened.mean, opened.std)
    batch = torch.stack([transform(p) for p in sample_pictures(opened.image_size)])
    with torch.no_grad():
        want = net(batch).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, opts, providers=providers(cfg.device if cfg.device != "auto" else "cpu"))
    except Exception as e:  # noqa: BLE001  (onnxruntime's own unexported classes)
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"onnxruntime cannot load the graph exported at --opset {cfg.opset} ({why}); try "
            f"another --opset; {dest} was not written"
        ) from None
    got = (
        np.concatenate([session.run(None, {"images": batch[i : i + 1].numpy()})[0] for i in range(len(batch))])
        if not cfg.dynamic_batch
        else session.run(None, {"images": batch.numpy()})[0]
    )
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    print(f"onnxruntime vs PyTorch on {len(batch)} pictures: max |diff| {diff:.2e} (bound {TOLERANCE[cfg.fp16]:g})")
    if not diff <= TOLERANCE[cfg.fp16]:
        raise ExportError(
            f"onnxruntime's outputs differ from PyTorch's by {diff:.3g} (> {TOLERANCE[cfg.fp16]:g}); "
            f"{dest} was not written"
        )
    return diff


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.build_parser(
        cli.prog("export"),
        __doc__.split("\n\n")[0],
        cli.EXPORT_FIELDS,
        notes={
            "image_size": "the checkpoint's, else the model's official size",
            "model_name": "the checkpoint's",
            "output": "the checkpoint's path, .onnx",
            "device": "auto: the check runs on onnxruntime's CPU provider",
        },
        command="export",
    )
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    cfg = load_config(config_path, flags)
    if cfg.push_to_hub and cfg.format != "hf":
        raise ConfigError("--push-to-hub uploads a Hugging Face model folder: add --format hf --output DIR")
    if cfg.format == "hf":
        from .hf import export_hf

        check_values(cfg, fields_for(EXPORT))
        export_hf(cfg)
    else:
        export_onnx(cfg)
    return 0


def console() -> None:
    """The ``asl-export`` entry point."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    console()
