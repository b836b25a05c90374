"""Tag images with a trained checkpoint.

    python infer.py --model-path runs/demo/best.pth --pic-path pics/demo.png
    python infer.py --model_path MS_COCO_TRresNet_L_448_86.6.pth --pic_path pics/ --json
    python infer.py --model-path runs/demo/best.pth --pic-path 'photos/*.jpg' --top-k 5 --save-image out.png

Threshold: --th, else the checkpoint's calibrated per-class thresholds
(validate.py --calibrate), else the official 0.7 (0.995 for --dataset_type OpenImages).
A plain timm state dict runs with --model-name (class count from its head) and
--class-names FILE (else the classes are numbered). An exported model.onnx (export.py) runs on
onnxruntime, without PyTorch (pip install -r requirements-infer.txt is enough).

The ``infer.py`` command; installed as ``asl-infer``, also ``python -m asl.infer``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import cli
from .config import (
    INFER,
    Config,
    check_values,
    fields_for,
    load_config,
)
from .errors import ConfigError, DataError
from .images import IMAGE_EXTENSIONS, iter_pictures, load_rgb
from .metrics import nonfinite_note
from .opening import open_configured
from .outputs import TAGGING
from .rundir import Source, check_apart, check_output_file, claim, file_sources
from .zoo import OFFICIAL_INFER_THRESHOLDS


def _pictures_in(folder: Path, recursive: bool) -> List[Path]:
    if recursive:
        return list(iter_pictures(folder))
    # regular files only: a FIFO named .jpg would block the reader forever
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())


def collect_images(specs: List[str], recursive: bool = False, relative: Optional[List[Path]] = None) -> List[Path]:
    """Files, folders (their images, sorted; with ``recursive`` their whole tree) and glob
    patterns, in the order given. ``relative``, when given, receives each picture's path relative
    to the folder that named it (its own name for a file or a glob's match)."""
    paths: List[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = _pictures_in(p, recursive)
            if relative is not None:
                relative += [f.relative_to(p) for f in found]
            if not found:
                raise DataError(f"no images in folder {spec}")
            paths += found
        elif p.is_file():
            paths.append(p)
            if relative is not None:
                relative.append(Path(p.name))
        elif p.exists():
            raise DataError(f"{spec} is not a regular file (a pipe or a device), so it is not read as an image")
        elif glob.has_magic(spec):
            found = sorted(
                Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in IMAGE_EXTENSIONS and Path(f).is_file()
            )
            if not found:
                raise DataError(f"no images match {spec}")
            paths += found
            if relative is not None:
                relative += [Path(f.name) for f in found]
        else:
            raise DataError(f"image not found: {spec}")
    return paths


def check_save_image(path: str, overwrite: bool) -> Path:
    """``--save-image``: a format PIL writes (by its extension), a new file (or, with
    ``--overwrite``, a picture infer.py drew) in a writable folder."""
    from PIL import Image

    from .rundir import check_output_file

    Image.init()
    dest = Path(path)
    fmt = Image.registered_extensions().get(dest.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"--save-image {path}: unknown picture format {dest.suffix or '(no extension)'!r}; use .png or .jpg"
        )
    writes = fmt in Image.SAVE  # PIL reads PSD, FITS, XPM, CUR, ... but cannot write them
    if writes:
        try:  # and some it writes only in other modes than RGB (BLP: palette pictures)
            Image.new("RGB", (8, 8)).save(io.BytesIO(), format=fmt)
        except (OSError, ValueError, KeyError):
            writes = False
    if not writes:
        raise ConfigError(f"--save-image {path}: Pillow reads {fmt} pictures but cannot write them; use .png or .jpg")
    return check_output_file(dest, "--save-image", overwrite, "picture")


def draw_labels(img, labels, dest: Path) -> None:
    """Save ``img`` with its labels written in its top-left corner (PIL, no window), marked as
    infer.py's (a PNG text chunk or a JPEG comment) so that ``--overwrite`` may replace it later."""
    from PIL import Image, ImageDraw, PngImagePlugin

    from .files import atomic_write
    from .outputs import PICTURE_MARK

    img = img.copy()
    if max(img.size) < 256:  # tiny images get enlarged so the text stays legible
        scale = 256 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    draw = ImageDraw.Draw(img)
    lines = [f"{lab['label']} {lab['score']:.2f}" for lab in labels] or ["(no label)"]
    y = 4
    for line in lines:
        box = draw.textbbox((4, y), line)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 0))
        y = box[3] + 6
    fmt = Image.registered_extensions()[dest.suffix.lower()]
    mark = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", PICTURE_MARK)
        mark = {"pnginfo": info}
    elif fmt == "JPEG":
        mark = {"comment": PICTURE_MARK.encode()}
    atomic_write(dest, writer=lambda f: img.save(f, format=fmt, **mark))


def pictures_read(specs: Sequence[str], paths: Sequence[Path]) -> List["Source"]:
    """What tagging reads, for :func:`asl.rundir.check_apart`: each folder named (nothing is
    written inside it) and each picture."""
    folders = [Source(f"the pictures' folder --pic-path {s}", Path(s), folder=True) for s in specs if Path(s).is_dir()]
    return folders + [Source(f"the picture {p}", p) for p in paths]


def check_tags_out(out: str, relative: Sequence[Path], overwrite: bool) -> List[Path]:
    """``--tags-out``: one ``.txt`` per picture at its relative path under ``out``. Every target
    is checked before any work: two pictures that would share a file, a folder or a file where a
    tag file or its folder goes, an existing tag file without ``--overwrite``."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--tags-out {out} is a file, not a folder")
    files = [root / r.with_suffix(".txt") for r in relative]
    seen: Dict[Path, int] = {}
    for k, f in enumerate(files):
        if f in seen:
            raise ConfigError(
                f"--tags-out: {relative[seen[f]]} and {relative[k]} would both be tagged in {f}; tag them separately"
            )
        seen[f] = k
    folders = {p for f in files for p in f.parents if root in p.parents}
    for p in sorted(folders):
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise ConfigError(
                f"--tags-out: {p} is {'a link' if p.is_symlink() else 'a file'}, where a folder of tags goes"
            )
    for f in files:
        if f.is_symlink() or f.is_dir():
            raise ConfigError(f"--tags-out: {f} is {'a link' if f.is_symlink() else 'a folder'}, where a tag file goes")
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        more = f" (+{len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ConfigError(f"--tags-out: {existing[0]} exists{more}; pass --overwrite to replace, or a new folder")
    return files


def exclusions(spec: Optional[str], class_names: Sequence[str]) -> np.ndarray:
    """``--exclude-tags a,b``: a (C,) mask of the classes never reported; unknown names refused."""
    mask = np.zeros(len(class_names), dtype=bool)
    if not spec:
        return mask
    index = {n: k for k, n in enumerate(class_names)}
    for name in (t.strip() for t in spec.split(",")):
        if not name:
            continue
        if name not in index:
            raise ConfigError(f"--exclude-tags: {name!r} is not a class of the model")
        mask[index[name]] = True
    return mask


def write_tags(path: Path, tags: Sequence[str]) -> None:
    """One sidecar file: the tags, comma-separated, highest score first (the image-tagger convention).
    Its folders were checked by :func:`check_tags_out`."""
    from .files import atomic_write, output_error

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path.parent, e) from None
    atomic_write(path, ", ".join(tags) + "\n")


def write_scores_csv(path: Path, class_names: Sequence[str], rows) -> None:
    """``image,<class>,...`` with every class's score, one row per picture."""
    from .files import atomic_write

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *class_names])
    for image, scores in rows:
        w.writerow([image, *(f"{float(v):.6f}" for v in scores)])
    atomic_write(path, buf.getvalue())


def _progress(total: int):
    """A progress bar on stderr where it is a terminal (tqdm's ``disable=None``)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=None, file=sys.stderr)


def tag_images(cfg: Config) -> List[Dict[str, Any]]:
    """Tag pictures (:func:`_tag_images`); ``--tags-out`` is claimed (:func:`asl.rundir.claim`),
    and a folder created for ``--save-image`` is removed again on failure."""
    from .files import removed_on_error

    made = [Path(cfg.save_image).parent] if cfg.save_image else []
    with removed_on_error(*made, *([Path(cfg.scores_csv).parent] if cfg.scores_csv else [])):
        return _tag_images(cfg)


def _tag_images(cfg: Config) -> List[Dict[str, Any]]:
    """Tag the pictures ``cfg.pic_path`` names with ``cfg.model_path`` (a checkpoint, or an
    exported ``.onnx`` model run by onnxruntime without PyTorch); print them.

    Threshold: ``cfg.th``, else the model's calibrated per-class thresholds, else the official
    one of ``cfg.dataset_type`` (``OFFICIAL_INFER_THRESHOLDS``). Input size: ``cfg.image_size``,
    else the model's, else its official size.

    Returns:
        ``[{"image": path, "labels": [{"label": name, "score": s}, ...]}]``, highest score first.
    """
    check_values(cfg, fields_for(INFER))
    if not cfg.model_path:
        raise ConfigError("pass --model-path CHECKPOINT")
    if not cfg.pic_path:
        raise ConfigError("pass --pic-path IMAGE [IMAGE|DIR|GLOB ...]")
    relative: List[Path] = []
    paths = collect_images(cfg.pic_path, recursive=bool(cfg.tags_out), relative=relative if cfg.tags_out else None)
    sources = pictures_read(cfg.pic_path, paths) + file_sources(
        model_path=cfg.model_path, class_names=cfg.class_names, class_descriptions=cfg.class_descriptions
    )
    if cfg.class_descriptions:  # a bad file is one line before any picture is read
        from .data.openimages import read_descriptions_file

        read_descriptions_file(Path(cfg.class_descriptions))
    for flag, dest in (("--save-image", cfg.save_image), ("--scores-csv", cfg.scores_csv)):
        if dest:
            check_apart(flag, dest, sources)
    if cfg.save_image:
        check_save_image(cfg.save_image, cfg.overwrite)
    if not cfg.tags_out:
        return _tag(cfg, paths, None)
    tag_files = check_tags_out(cfg.tags_out, relative, cfg.overwrite)
    check_apart("--tags-out", cfg.tags_out, sources, folder=True, files=tag_files)
    # a folder of tags is infer.py's own (its lock), or new: --overwrite then covers the tag files only
    with claim(cfg.tags_out, TAGGING, overwrite=True, sources=sources, flag="--tags-out"):
        return _tag(cfg, paths, tag_files)


def thresholds_for(cfg: Config, model) -> np.ndarray:
    """(C,) thresholds: ``--th``, else the model's calibrated ones, else the official one of
    ``--dataset-type``."""
    n = model.num_classes
    if cfg.th is not None:
        return np.full(n, cfg.th, dtype=np.float32)
    if model.thresholds is not None and cfg.dataset_type is None:
        return np.asarray(model.thresholds, dtype=np.float32)
    return np.full(n, OFFICIAL_INFER_THRESHOLDS[cfg.dataset_type or "ms_coco"], dtype=np.float32)


@dataclass
class Tagged:
    """One picture, tagged: its index in the pictures, path, decoded picture, scores (C,) and
    labels (highest score first)."""

    index: int
    path: Path
    picture: Any
    scores: np.ndarray
    labels: List[Dict[str, Any]]


@dataclass
class Batches:
    """What :func:`tag_batches` met besides the tags: unreadable pictures (path, why) and the
    classes that scored NaN or inf on some picture."""

    bad: List[Tuple[str, str]]
    broken: np.ndarray


SINGLE_LABEL_TOP_K = 5  # classes a single-label model reports per picture without --top-k


def tag_batches(model, paths: Sequence[Path], cfg: Config, seen: Batches, progress=None) -> Iterator[Tagged]:
    """Decode ``paths`` in batches of ``cfg.batch_size``, score them, and yield each picture's tags:
    strictly above its class's threshold (as the official infer.py), at least ``--min-score``,
    not excluded, the ``--top-k`` highest. An unreadable picture is recorded in ``seen`` and
    passed over."""
    thresholds = thresholds_for(cfg, model)
    excluded = exclusions(cfg.exclude_tags, model.class_names)
    for start in range(0, len(paths), cfg.batch_size):
        batch, imgs = [], []
        for i in range(start, min(start + cfg.batch_size, len(paths))):
            try:
                imgs.append(load_rgb(paths[i]))
            except DataError as e:  # one bad picture (a macOS ._photo.jpg) is named; the rest are tagged
                seen.bad.append((str(paths[i]), str(e)))
                continue
            batch.append(i)
        if progress is not None:
            progress.update(min(cfg.batch_size, len(paths) - start))
        if not batch:
            continue
        batch_scores = model.scores(imgs)
        seen.broken |= ~np.isfinite(batch_scores).all(axis=0)
        for i, img, s in zip(batch, imgs, batch_scores):
            if model.task == "single_label":  # the top classes by softmax probability, no threshold
                ranked = [k for k in np.argsort(-s, kind="stable") if not excluded[k] and s[k] >= cfg.min_score]
                keep = ranked[: cfg.top_k or SINGLE_LABEL_TOP_K]
            else:
                keep = np.flatnonzero((s > thresholds) & (s >= cfg.min_score) & ~excluded).tolist()
            labels = sorted(
                ({"label": model.class_names[k], "score": round(float(s[k]), 4)} for k in keep),
                key=lambda d: -d["score"],
            )
            yield Tagged(i, paths[i], img, s, labels[: cfg.top_k] if cfg.top_k else labels)


def _tag(cfg: Config, paths: List[Path], tag_files: Optional[List[Path]]) -> List[Dict[str, Any]]:
    """Tag ``paths`` (checked) and emit the tags through the writers asked for: tag files, the
    scores CSV, the printed lines or JSON, the labelled picture."""
    if cfg.scores_csv:
        check_output_file(cfg.scores_csv, "--scores-csv", cfg.overwrite, "scores_csv")
    model = open_configured(cfg, cfg.device)
    if cfg.class_descriptions:
        model = _described(model, Path(cfg.class_descriptions))
    seen = Batches([], np.zeros(model.num_classes, dtype=bool))
    results, score_rows, first = [], [], None
    progress = _progress(len(paths)) if tag_files is not None else None
    for t in tag_batches(model, paths, cfg, seen, progress):
        first = first or t
        results.append({"image": str(t.path), "labels": t.labels})
        if cfg.scores_csv:
            score_rows.append((str(t.path), t.scores))
        if tag_files is not None:  # a single-label model's tag is its top class
            tags = [lab["label"] for lab in t.labels]
            write_tags(tag_files[t.index], tags[:1] if model.task == "single_label" else tags)
    if progress is not None:
        progress.close()
    if not results:
        bad = seen.bad
        raise DataError(
            bad[0][1] if len(bad) == 1 else f"none of the {len(paths)} pictures could be read (first: {bad[0][1]})"
        )
    _warn(seen, len(paths), model.class_names)
    if cfg.scores_csv:
        write_scores_csv(Path(cfg.scores_csv), model.class_names, score_rows)
    print_results(results, cfg)
    if cfg.save_image:
        save_labelled(first, cfg)
    return results


def _described(model, path: Path):
    """The model with its MIDs shown as the display names of ``path`` (Open Images' descriptions)."""
    import dataclasses

    from .data.openimages import described, read_descriptions_file

    names = described(model.class_names, read_descriptions_file(path))
    if names == model.class_names:
        print(
            f"warning: none of the model's class names is a MID of {path}: they are shown as they are", file=sys.stderr
        )
        return model
    return dataclasses.replace(model, class_names=names)


def _warn(seen: Batches, total: int, class_names: Sequence[str]) -> None:
    for _, why in seen.bad:
        print(f"warning: skipped: {why}", file=sys.stderr)
    if seen.bad:
        print(f"warning: {len(seen.bad)} of {total} pictures were unreadable and skipped", file=sys.stderr)
    note = nonfinite_note(seen.broken, class_names)
    if note:
        print(f"warning: {note}", file=sys.stderr)


def print_results(results: List[Dict[str, Any]], cfg: Config) -> None:
    """The tags on standard output: JSON (``--json``), one summary line (``--tags-out``), or a
    line per picture."""
    if cfg.json:
        print(json.dumps(results))
    elif cfg.tags_out:
        print(
            f"{len(results)} pictures tagged -> {cfg.tags_out}"
            + (f" (scores -> {cfg.scores_csv})" if cfg.scores_csv else "")
        )
    else:
        for r in results:
            tags = ", ".join(f"{lab['label']} ({lab['score']:.2f})" for lab in r["labels"]) or "(no label)"
            print(f"{r['image']}: {tags}")


def save_labelled(first: Tagged, cfg: Config) -> None:
    """``--save-image``: the first picture with its labels drawn in."""
    try:
        draw_labels(first.picture, first.labels, Path(cfg.save_image))
    except OSError as e:  # checked writable before any work; a full disk can still fail here
        raise ConfigError(f"cannot write --save-image {cfg.save_image}: {e.strerror or e}") from None
    if not cfg.json:
        print(f"labelled picture -> {cfg.save_image}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.build_parser(
        cli.prog("infer"),
        __doc__.split("\n\n")[0],
        cli.INFER_FIELDS,
        defaults=Config(batch_size=64),
        notes={"image_size": "the checkpoint's, else the model's official size", "model_name": "the checkpoint's"},
        command="infer",
    )
    config_path, flags = cli.parse_flags(parser, argv)
    cfg = load_config(config_path, flags)
    cli.setup_logging(verbose=False)
    tag_images(cfg)
    return 0


def console() -> None:
    """The ``asl-infer`` entry point."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    console()
