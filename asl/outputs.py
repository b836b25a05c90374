"""What each command writes, and how a file it wrote is told from a user's file of the same name:
the :class:`Product` of each command that owns a folder (training, validation, inspection,
conversion, folder tagging) and the content tests of single output files. :mod:`asl.rundir`
decides with them whose a folder or a file is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .errors import DataError
from .files import atomic_write
from .labelled import LABELLED_FILE

__all__ = [
    "Product",
    "TRAINING",
    "VALIDATION",
    "INSPECTION",
    "CONVERSION",
    "TAGGING",
    "SINGLE_FILES",
    "BY_COMMAND",
    "SHARDING",
    "HF_EXPORT",
    "REPORT_GENERATOR",
    "PICTURE_MARK",
    "read_metrics",
    "write_per_class_ap",
]


def head_bytes(path: Path, n: int = 512) -> bytes:
    """The first ``n`` bytes of a file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_checkpoint(path: Path) -> bool:
    """A torch.save file of ours: a dict holding a state dict under ``model``."""
    if not _is_zip(path):
        return False
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (any failure to load means: not a checkpoint this command wrote)
        return False
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict)


def _is_zip(path: Path) -> bool:
    return path.is_file() and head_bytes(path, 4) == b"PK\x03\x04"


def _is_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _is_jsonl(path: Path) -> bool:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return all(isinstance(json.loads(ln), dict) for ln in lines)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _is_run_config(path: Path) -> bool:
    """A ``config.yaml`` a run wrote: the resolved config, every field of the schema spelled out
    (a user's recipe names a few)."""
    import yaml

    from .config import FIELDS

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and set(data) <= set(FIELDS) and len(data) >= 0.9 * len(FIELDS)


def _never(path: Path) -> bool:
    return False


def _is_png(path: Path) -> bool:
    return head_bytes(path, 8) == b"\x89PNG\r\n\x1a\n"


def _is_npy(path: Path) -> bool:
    return head_bytes(path, 6) == b"\x93NUMPY"


def _is_labelled_scores(path: Path) -> bool:
    """An ``.npz`` of :class:`asl.labelled.LabelledScores`' arrays."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {"indptr.npy", "rows.npy", "num_images.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and _is_model_card(path / "README.md")


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    head = head_bytes(path, 9)
    return len(head) == 9 and head[8:9] == b"{"


def _is_model_card(path: Path) -> bool:
    return b"library_name: timm" in head_bytes(path, 200)


REPORT_GENERATOR = "<meta name='generator' content='asl report'>"


def _is_report(path: Path) -> bool:
    return REPORT_GENERATOR.encode() in head_bytes(path, 1024)


def _is_event_folder(path: Path) -> bool:
    """A TensorBoard folder this package wrote: event files only."""
    if not path.is_dir() or path.is_symlink():
        return False
    return all(f.is_file() and f.name.startswith("events.out.tfevents.") for f in path.rglob("*") if not f.is_dir())


def _is_scores_csv(path: Path) -> bool:
    """``infer.py --scores-csv``'s file: an ``image,<class>,...`` header."""
    return head_bytes(path, 6) == b"image,"


def _is_onnx(path: Path) -> bool:
    from .checkpoint import sniff_weights

    try:
        return path.is_file() and sniff_weights(path) == "onnx"
    except Exception:  # noqa: BLE001  (unreadable: not ours)
        return False


PICTURE_MARK = "asl infer.py"  # written into --save-image pictures (PNG text, JPEG comment)


def _is_labelled_picture(path: Path) -> bool:
    """A picture ``infer.py --save-image`` drew: it carries :data:`PICTURE_MARK`."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            info = img.info
    except Exception:  # noqa: BLE001  (not a picture Pillow opens: not ours)
        return False
    mark = info.get("Software") or info.get("comment") or b""
    return (mark.decode("utf-8", "replace") if isinstance(mark, bytes) else str(mark)) == PICTURE_MARK


@dataclass(frozen=True)
class Product:
    """What one command writes into a folder it owns.

    Attributes:
        command: the command's name, recorded in the folder's lock.
        noun: how messages call such a folder (``a run``).
        writer: how messages call the command (``run``, ``validate.py``).
        files: name -> test that a file of that name holds what the command writes.
        any_file: files of other names are the command's too (``--tags-out``: a tree of .txt).
        reuse: a folder of this product may be written again with ``--overwrite``.
    """

    command: str
    noun: str
    writer: str
    files: Mapping[str, Callable[[Path], bool]]
    any_file: bool = False
    reuse: bool = True


TRAINING = Product(
    "train",
    "a run",
    "run",
    {
        "last.pth": _is_checkpoint,
        "best.pth": _is_checkpoint,
        "metrics.jsonl": _is_jsonl,
        "config.yaml": _is_run_config,
        "curves.png": _is_png,
        "per_class_ap.json": _is_json_object,
        "report.html": _is_report,
        "tensorboard": _is_event_folder,
        "hf": _is_hf_folder,  # train.py --push-to-hub: best.pth as a Hugging Face folder
    },
)


VALIDATION = Product(
    "validate",
    "a validation",
    "validate.py",
    {
        "metrics.json": _is_json_object,
        "scores.npy": _is_npy,
        "targets.npy": _is_npy,
        LABELLED_FILE: _is_labelled_scores,
        "report.html": _is_report,
        "calibrated.pth": _is_checkpoint,
    },
)


INSPECTION = Product("inspect", "an inspection", "inspect", {"summary.json": _is_json_object, "positives.png": _is_png})


CONVERSION = Product(
    "convert", "a conversion", "convert", dict.fromkeys(("labels.csv", "classes.txt"), _never), reuse=False
)


TAGGING = Product("tags", "infer.py's tags", "infer.py --tags-out", {}, any_file=True)


def _is_prior_csv(path: Path) -> bool:
    """``validate.py --write-prior``'s file: a ``Classes,avg_pred`` header."""
    return head_bytes(path, 16).startswith(b"Classes,avg_pred")


SINGLE_FILES: Mapping[str, Callable[[Path], bool]] = {
    "prior_csv": _is_prior_csv,
    "onnx": _is_onnx,
    "scores_csv": _is_scores_csv,
    "picture": _is_labelled_picture,
    "checkpoint": _is_checkpoint,
}


INFO_FILE = "_info.json"
# asl-data shard: tars, classes.txt and _info.json into a new folder, never into an old one
SHARDING = Product(
    "shard",
    "a set of shards",
    "shard",
    dict.fromkeys(("_info.json", "classes.txt"), _never),
    any_file=True,
    reuse=False,
)


# export.py --format hf: timm's model folder and its card
HF_EXPORT = Product(
    "export-hf",
    "a Hugging Face model folder",
    "export.py --format hf",
    {"model.safetensors": _is_safetensors, "config.json": _is_json_object, "README.md": _is_model_card},
)


BY_COMMAND = {p.command: p for p in (TRAINING, VALIDATION, INSPECTION, CONVERSION, TAGGING, SHARDING, HF_EXPORT)}


# --------------------------------------------------------------------------- a run's records


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The epoch records of a run's ``metrics.jsonl``; a damaged file is one :class:`DataError` line."""
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"{path} is damaged ({type(e).__name__}: {e}); move it away to resume without the earlier epochs' records"
        ) from None
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
        raise DataError(
            f"{path} holds a line that is not an epoch record; move it away to resume without the "
            f"earlier epochs' records"
        )
    return records


def write_per_class_ap(path: Path, epoch: int, class_names, ev: Dict[str, Any], ev_ema: Optional[Dict]) -> None:
    """The latest epoch's AP per class, plain and EMA (read by the study's frequency analysis)."""

    def ap(e):
        return None if e is None else [None if v != v else round(float(v), 5) for v in e["per_class_ap"]]

    atomic_write(
        path, json.dumps({"epoch": epoch, "class_names": list(class_names), "ap": ap(ev), "ap_ema": ap(ev_ema)})
    )
