"""Class names: read from a file, checked as every dataset and model file must hold them, taken
from a checkpoint's ``idx_to_class``, and matched between a model and a dataset. Torch-free: the
ONNX tagging path and the datasets share it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type

from .errors import ASLError, CheckpointError, DataError

__all__ = ["read_class_names", "check_class_names", "class_names_of", "match_classes"]


def read_class_names(path: str | os.PathLike, num_classes: Optional[int] = None) -> list:
    """Class names from a text file, one per line (blank lines skipped), e.g. a tagged set's
    ``classes.txt``; their count must be ``num_classes`` when given."""
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise CheckpointError(f"--class-names file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"--class-names {path} is a folder, not a file of names") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"--class-names {path}: not a UTF-8 text file") from None
    except OSError as e:
        raise CheckpointError(f"--class-names {path}: cannot read it ({e.strerror or type(e).__name__})") from None
    check_class_names(names, f"--class-names {path}")
    if num_classes is not None and len(names) != num_classes:
        raise CheckpointError(f"--class-names {path} lists {len(names)} names, the model has {num_classes} classes")
    return names


def check_class_names(
    names: Sequence[str], what: str, unique: bool = True, error: Type[ASLError] = CheckpointError
) -> List[str]:
    """Class names as every dataset and model file must hold them: non-empty, on one line each (no
    newline, tab or NUL), without surrounding spaces, and (``unique``) each listed once; else one
    ``error`` line (a dataset's: :class:`~asl.errors.DataError`)."""
    seen, dup = set(), []
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise error(f"{what}: a class name is empty")
        if any(ch in n for ch in "\n\r\t\x00") or n != n.strip():
            raise error(f"{what}: class name {n!r} holds a newline, tab, NUL or surrounding spaces")
        if n in seen:
            dup.append(n)
        seen.add(n)
    if dup and unique:
        raise error(
            f"{what}: {len(dup)} class name{'s are' if len(dup) > 1 else ' is'} listed twice "
            f"({', '.join(map(repr, dup[:3]))}); each class needs one name of its own"
        )
    return list(names)


def class_names_of(ckpt: Dict[str, Any], num_classes: int) -> list:
    """Class names from ``idx_to_class`` (keys may be ints or strings), else ``class_<k>``."""
    idx = ckpt.get("idx_to_class") or {}
    names = {int(k): str(v) for k, v in idx.items()} if isinstance(idx, dict) else {}
    return [names.get(k, f"class_{k}") for k in range(num_classes)]


def match_classes(
    model_names: Sequence[str],
    data_names: Sequence[str],
    named: bool = True,
    path: Any = "checkpoint",
    aliases: Optional[Dict[str, List[str]]] = None,
) -> Optional[list]:
    """How the model's outputs map onto the dataset's classes, matched by name.

    Args:
        model_names: the checkpoint's class names, in output order.
        data_names: the dataset's class names, in target order.
        named: False when the checkpoint carries no names (a plain state dict): then only the
            count is checked and outputs are taken in order.
        path: for messages.
        aliases: other names the dataset's classes answer to (an Open Images MID, or a display name
            several classes share: those classes in order, one per repeat).

    Returns:
        None when output k is class k already; else the list ``order`` with
        ``scores[:, order]`` in the dataset's class order (the same set in another order).

    Raises:
        CheckpointError: different counts, or names that differ (the first differences listed).
    """
    if len(model_names) != len(data_names):
        raise CheckpointError(f"{path} has {len(model_names)} classes, the dataset {len(data_names)}")
    if not named or list(model_names) == list(data_names):
        return None
    if aliases:
        model_names = _as_data_names(model_names, set(data_names), aliases)
        if model_names == list(data_names):
            return None
    in_model, in_data = set(model_names), set(data_names)
    only_model = [n for n in model_names if n not in in_data]
    only_data = [n for n in data_names if n not in in_model]
    if only_model or only_data:

        def first(names):
            return ", ".join(map(repr, names[:3])) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

        raise CheckpointError(
            f"{path} was trained on other classes than the dataset's: {len(only_model)} only in "
            f"the checkpoint ({first(only_model)}), {len(only_data)} only in the dataset "
            f"({first(only_data)}); if the checkpoint's names are wrong, pass the right ones with "
            f"--class-names FILE"
        )
    index = {n: k for k, n in enumerate(model_names)}
    return [index[n] for n in data_names]


def _as_data_names(model_names: Sequence[str], data: set, aliases: Dict[str, List[str]]) -> List[str]:
    out, used = [], {}
    for n in model_names:
        if n in data or n not in aliases:
            out.append(n)
            continue
        k = used.get(n, 0)
        used[n] = k + 1
        out.append(aliases[n][k] if k < len(aliases[n]) else n)
    return out


def classes_sha256(class_names: Sequence[str]) -> str:
    """The SHA-256 of a class list as ``classes.txt`` spells it: what tells two class lists apart."""
    import hashlib

    return hashlib.sha256("".join(c + "\n" for c in class_names).encode("utf-8")).hexdigest()


PRIOR_HEADER = ("Classes", "avg_pred")  # the class prior's CSV, as the CSL repository writes it


def read_prior(path: str | os.PathLike, class_names: Sequence[str]) -> List[float]:
    """A class prior (``Classes,avg_pred``: a class name and its mean predicted probability per
    row) in the order of ``class_names``, matched by name.

    Raises:
        DataError: not such a CSV, a class missing from it or one it names that the data lack,
            a value that is not a probability.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"--prior-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not rows or tuple(h.strip() for h in rows[0][:2]) != PRIOR_HEADER or any(len(r) != 2 for r in rows[1:] if r):
        raise DataError(f"--prior-file {path}: not a class prior (a CSV 'Classes,avg_pred' of two columns)")
    prior: Dict[str, float] = {}
    for line_no, (name, value) in enumerate((r for r in rows[1:] if r), start=2):
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not 0.0 <= v <= 1.0:
            raise DataError(f"--prior-file {path}:{line_no}: {value!r} for {name!r} is not a probability")
        prior[name.strip()] = v
    missing = [n for n in class_names if n not in prior]
    extra = [n for n in prior if n not in set(class_names)]
    if missing or extra:
        raise DataError(
            f"--prior-file {path} holds another class list ({len(missing)} of the data's classes missing, "
            f"first {missing[:3]}; {len(extra)} not in the data, first {extra[:3]})"
        )
    return [prior[n] for n in class_names]


def prior_csv(class_names: Sequence[str], prior: Sequence[float]) -> str:
    """The class prior as the CSV :func:`read_prior` reads (and CSL writes)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PRIOR_HEADER)
    w.writerows([n, f"{float(v):.6f}"] for n, v in zip(class_names, prior))
    return buf.getvalue()
