"""asl.data.formats and asl.data.detect: the label formats people export (one-hot CSV, sidecar
tag files, Hugging Face imagefolder, Label Studio, Planet-style labels.csv), each read into the
label matrix of the equivalent labels.csv, detected by --dataset auto, trained on for an epoch;
and their bad input as one error line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from asl.data import create_dataset
from asl.data.detect import detect_dataset
from asl.errors import DataError
from tests.conftest import make_tagged
from tests.helpers import TINY, call, one_error, tree_digest

CLASSES = ("cat", "dog", "sky", "tree")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tagged set (labels.csv with a split column) the formats are written from."""
    root = make_tagged(tmp_path_factory.mktemp("src") / "tagged", 16, 8)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    return root, rows


def _copy_images(src: Path, rows, dest: Path, split_folders: bool):
    """Each picture copied into ``dest`` (under train/ and validation/ when asked)."""
    out = []
    for r in rows:
        sub = {"train": "train", "val": "validation"}[r["split"]] if split_folders else ""
        target = dest / sub / "pics" / Path(r["image"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["image"], target)
        out.append((target, r))
    return out


def write_onehot(src, rows, dest: Path) -> Path:
    for split, folder in (("train", "train"), ("val", "valid")):  # Roboflow's folders and _classes.csv
        (dest / folder).mkdir(parents=True)
        with open(dest / folder / "_classes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", *CLASSES])
            for r in rows:
                if r["split"] == split:
                    shutil.copy(src / r["image"], dest / folder / Path(r["image"]).name)
                    tags = set(r["labels"].split("|"))
                    w.writerow([Path(r["image"]).name, *(int(c in tags) for c in CLASSES)])
    return dest


def write_sidecar(src, rows, dest: Path) -> Path:
    for target, r in _copy_images(src, rows, dest, split_folders=True):
        target.with_suffix(".txt").write_text(", ".join(t for t in r["labels"].split("|") if t))
    return dest


def write_imagefolder(src, rows, dest: Path) -> Path:
    for folder in ("train", "validation"):
        (dest / folder).mkdir(parents=True)
    files = {"train": [], "validation": []}
    for target, r in _copy_images(src, rows, dest, split_folders=True):
        folder = target.parent.parent
        files[folder.name].append(
            {"file_name": f"pics/{target.name}", "labels": [t for t in r["labels"].split("|") if t]}
        )
    for folder, recs in files.items():
        (dest / folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return dest


def write_labelstudio(src, rows, dest: Path) -> Path:
    tasks = []
    for i, (target, r) in enumerate(_copy_images(src, rows, dest, split_folders=False)):
        result = [
            {
                "type": "choices",
                "from_name": "tags",
                "to_name": "image",
                "value": {"choices": [t for t in r["labels"].split("|") if t]},
            }
        ]
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/{target.name}"}, "annotations": [{"result": result}]})
    (dest / "project-1-at-2026-12-01.json").write_text(json.dumps(tasks))
    return dest


def write_planet(src, rows, dest: Path) -> Path:
    (dest / "train-jpg").mkdir(parents=True)
    with open(dest / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "tags", "split"])
        for r in rows:
            shutil.copy(src / r["image"], dest / "train-jpg" / Path(r["image"]).name)
            w.writerow([Path(r["image"]).stem, " ".join(t for t in r["labels"].split("|") if t), r["split"]])
    return dest


WRITERS = {
    "onehot": write_onehot,
    "sidecar": write_sidecar,
    "imagefolder": write_imagefolder,
    "labelstudio": write_labelstudio,
    "tagged": write_planet,
}


def _by_name(ds):
    return {Path(p).name: ds.targets[i] for i, p in enumerate(ds.paths)}, ds.class_names


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_reads_the_label_matrix_of_the_equivalent_labels_csv(fmt, source, tmp_path):
    src, rows = source
    root = WRITERS[fmt](src, rows, tmp_path / fmt)
    before = tree_digest(root)
    assert detect_dataset(str(root))[0] == fmt
    options = {"tag_separator": " "} if fmt == "tagged" else {}
    # Label Studio exports hold no split: its seeded random split is compared as a whole
    splits = [("train", "val")] if fmt == "labelstudio" else [("train",), ("val",)]
    for group in splits:
        want, got = {}, {}
        for split in group:
            w, want_names = _by_name(create_dataset("tagged", str(src), split))
            g, names = _by_name(create_dataset(fmt, str(root), split, **options))
            want.update(w)
            got.update(g)
            assert names == want_names == list(CLASSES)
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert tree_digest(root) == before  # nothing written into the user's folder


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_trains_an_epoch_with_dataset_auto(fmt, source, tmp_path, capsys, caplog):
    src, rows = source
    root = WRITERS[fmt](src, rows, tmp_path / fmt)
    extra = ["--tag-separator", " "] if fmt == "tagged" else []
    rc, _, err = call("train", [root, "--dataset", "auto", *extra, "--output", tmp_path / "run", *TINY], capsys)
    assert rc == 0, err
    assert f"--dataset auto: {fmt}" in caplog.text
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"dataset: {fmt}" in config  # the resolved name: a resume reads the same format


def test_onehot_unknown_cells_are_minus_one(tmp_path):
    make_tagged(tmp_path / "src", 2, 0)
    (tmp_path / "d").mkdir()
    for i in range(2):
        shutil.copy(tmp_path / "src" / "img" / f"{i:04d}.png", tmp_path / "d" / f"{i}.png")
    (tmp_path / "d" / "labels.csv").write_text("filename,cat,dog,sky\n0.png,1,,0\n1.png,0,-1,1\n")
    ds = create_dataset("onehot", str(tmp_path / "d"), "train", val_fraction=0.01)
    got = dict(zip((Path(p).name for p in ds.paths), ds.targets.tolist()))
    assert got == {"0.png": [1.0, -1.0, 0.0], "1.png": [0.0, -1.0, 1.0]}


def test_bad_input_is_one_error_before_training(tmp_path, capsys):
    make_tagged(tmp_path / "src", 2, 0)
    pic = tmp_path / "src" / "img" / "0000.png"

    def folder(name):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(pic, d / "a.png")
        return d

    cases = []
    d = folder("nothing")
    cases.append((d, "auto", "holds no dataset format --dataset auto knows; looked for"))
    d = folder("two")
    (d / "a.txt").write_text("cat")
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "labels": ["cat"]}) + "\n")
    (d / "labels.csv").write_text("image,labels\na.png,cat\n")
    cases.append((d, "auto", "pass --dataset tagged or --dataset imagefolder"))
    d = folder("onehot")
    (d / "_classes.csv").write_text("filename,cat,dog\na.png,1,2\n")
    cases.append((d, "onehot", "column 'dog' holds '2'"))
    d = folder("binary")
    (d / "a.txt").write_bytes(b"\x89PNG\0\0\x01")
    cases.append((d, "sidecar", "a binary file, not a tag list"))
    d = folder("studio")
    task = {"data": {"image": "/data/upload/1/a.png"}, "annotations": [{"result": [{"type": "rectanglelabels"}]}]}
    (d / "export.json").write_text(json.dumps([task]))
    cases.append((d, "labelstudio", "only 'rectanglelabels'"))
    d = folder("outside")
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "../src/img/0000.png", "labels": ["cat"]}) + "\n")
    cases.append((d, "imagefolder", "points outside"))
    for root, dataset, fragment in cases:
        before = tree_digest(root)
        rc, _, err = call("train", [root, "--dataset", dataset, "--output", tmp_path / "o", *TINY], capsys)
        one_error(rc, err, fragment)
        assert tree_digest(root) == before and not (tmp_path / "o").exists()


def test_a_sidecar_separator_and_pictures_without_tags(tmp_path, caplog):
    make_tagged(tmp_path / "src", 3, 0)
    d = tmp_path / "d" / "nested" / "deeper"
    d.mkdir(parents=True)
    for i in range(3):
        shutil.copy(tmp_path / "src" / "img" / f"{i:04d}.png", d / f"{i}.png")
    (d / "0.txt").write_text("cat; dog")
    (d / "1.txt").write_text("dog")  # 2.png has no tags file: left out, and said so
    ds = create_dataset("sidecar", str(tmp_path / "d"), "train", tag_separator=";", val_fraction=0.01)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2
    assert "1 pictures have no .txt of tags" in caplog.text
    with pytest.raises(DataError, match="split 'val' is empty"):
        create_dataset("sidecar", str(tmp_path / "d"), "val", tag_separator=";", val_fraction=0.01)


@pytest.mark.parametrize("fmt", ["onehot", "sidecar", "labelstudio"])
def test_convert_writes_the_same_labels_into_a_new_folder(fmt, source, tmp_path, capsys):
    from asl.data import convert

    src, rows = source
    root = WRITERS[fmt](src, rows, tmp_path / fmt)
    before = tree_digest(root)
    rc, out, err = call(convert.main, [root, "--output", tmp_path / "new"], capsys)
    assert rc == 0, err
    assert (tmp_path / "new" / "classes.txt").read_text().split() == list(CLASSES)
    for split in ("train", "val"):
        want, _ = _by_name(create_dataset(fmt, str(root), split))
        got, names = _by_name(create_dataset("tagged", str(tmp_path / "new"), split))
        assert names == list(CLASSES) and got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert tree_digest(root) == before
    rc, _, err = call(convert.main, [root, "--output", root / "inside"], capsys)
    one_error(rc, err, "is inside the dataset folder")
    rc, _, err = call(convert.main, [root, "--output", tmp_path / "new"], capsys)
    one_error(rc, err, "exists and is not an empty folder")
    assert tree_digest(root) == before


def test_validate_reads_a_format_by_dataset_auto(trained_run, source, tmp_path, capsys, caplog):
    src, rows = source
    root = write_onehot(src, rows, tmp_path / "onehot")
    rc, out, err = call(
        "validate",
        ["--model-path", trained_run["out"] / "best.pth", root, "--dataset", "auto", "--workers", "0"],
        capsys,
    )
    assert rc == 0, err
    assert "--dataset auto: onehot" in caplog.text and out.startswith("mAP ")
    assert "8 images" in out  # the valid/ folder: the evaluation split


def test_linked_pictures_read_and_names_that_leave_the_folder_do_not(source, tmp_path):
    src, rows = source
    d = tmp_path / "linked"
    (d / "pics").mkdir(parents=True)
    recs = []
    for r in rows[:6]:
        (d / "pics" / Path(r["image"]).name).symlink_to((src / r["image"]).resolve())  # pictures kept elsewhere
        recs.append({"file_name": f"pics/{Path(r['image']).name}", "labels": [t for t in r["labels"].split("|") if t]})
    (d / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    ds = create_dataset("imagefolder", str(d), "train", val_fraction=0.01)
    assert len(ds) == 6 and ds.bad_count == 0
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "/etc/passwd", "labels": ["cat"]}) + "\n")
    with pytest.raises(DataError, match="points outside"):
        create_dataset("imagefolder", str(d), "train")


def test_convert_keeps_a_voc_evaluation_split_as_val(tmp_path, capsys):
    """VOC's evaluation split is named test: it becomes labels.csv's val, not a second test."""
    from asl.data import convert
    from tests.conftest import make_voc

    root = make_voc(tmp_path / "voc")
    rc, _, err = call(convert.main, [root, "--dataset", "voc", "--output", tmp_path / "new"], capsys)
    assert rc == 0, err
    splits = [r["split"] for r in csv.DictReader(open(tmp_path / "new" / "labels.csv"))]
    assert splits == ["train"] * 3 + ["val"] * 2
    for ours, theirs in (("train", "trainval"), ("val", "test")):
        want = create_dataset("voc", str(root), theirs)
        got = create_dataset("tagged", str(tmp_path / "new"), ours)
        assert got.class_names == want.class_names
        assert np.array_equal(got.targets, np.where(want.targets < 0, 0, want.targets))  # unknown: negative


# --------------------------------------------------------------------------- hostile inputs, one family each


def _pictures(tmp_path, folder: Path, names):
    """Copies of generated pictures under ``folder`` with the given relative names."""
    src = make_tagged(tmp_path / "_src", len(names), 0)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "img" / f"{i:04d}.png", folder / name)
    return folder


def _task(image, *annotations, **data):
    return {
        "data": {**data, "image": image},
        "annotations": [
            {"result": [{"type": "choices", "to_name": "image", "value": {"choices": c}} for c in [a]]}
            for a in annotations
        ],
    }


def _labels(ds):
    return {
        Path(p).name: sorted(c for c, v in zip(ds.class_names, row) if v == 1) for p, row in zip(ds.paths, ds.targets)
    }


def test_labelstudio_hostile_exports(tmp_path, caplog):
    d = _pictures(tmp_path, tmp_path / "ls", ["a.png", "b.png", "c.png"])
    tasks = [
        _task("/data/upload/1/a.png", ["cat"], ["dog"]),  # two annotators who disagree: joined, and said
        _task("/data/upload/1/8f3a2b1c-b.png", "cat"),  # a choice as a string; an upload's hash prefix
        {
            "data": {"caption": "a dog on a sofa.jpg", "img": "/data/upload/1/c.png"},  # a text field first
            "annotations": [
                {
                    "result": [
                        {"type": "choices", "to_name": "img", "value": {"choices": ["sky"]}},
                        {"type": "textarea", "to_name": "img", "value": {"text": ["nice"]}},
                        {"type": "taxonomy", "to_name": "img", "value": {"taxonomy": [["Animal", "Cat"]]}},
                    ]
                }
            ],
        },
    ]
    (d / "project-1.json").write_text(json.dumps(tasks))
    (d / "unrelated.json").write_text(json.dumps([{"name": "not a task"}]))  # not an export, by its shape
    ds = create_dataset("labelstudio", str(d), "train", val_fraction=0.01)
    assert _labels(ds) == {"a.png": ["cat", "dog"], "b.png": ["cat"], "c.png": ["sky"]}
    assert ds.class_names == ["cat", "dog", "sky"]
    assert "1 tasks have annotations that disagree" in caplog.text
    assert "2 results that are not choices (textarea 1, taxonomy 1) are left out" in caplog.text
    assert detect_dataset(str(d))[0] == "labelstudio"
    # a list where the value object goes: one line
    tasks[1]["annotations"][0]["result"][0]["value"] = ["cat"]
    (d / "project-1.json").write_text(json.dumps(tasks))
    with pytest.raises(DataError, match="task 1: a 'choices' result whose value is \\['cat'\\]"):
        create_dataset("labelstudio", str(d), "train", val_fraction=0.01)
    # two pictures of one upload name: ambiguous, not missing
    tasks[1]["annotations"][0]["result"][0]["value"] = {"choices": ["cat"]}
    (d / "project-1.json").write_text(json.dumps(tasks))
    _pictures(tmp_path, d / "more", ["b.png"])
    with pytest.raises(DataError, match="'8f3a2b1c-b.png' matches 2 pictures .*ambiguous"):
        create_dataset("labelstudio", str(d), "train", val_fraction=0.01)


def test_imagefolder_hostile_metadata(tmp_path):
    d = _pictures(tmp_path, tmp_path / "hf", ["x.png", "y.png"])
    (d / "metadata.csv").write_text("file_name,labels\nx.png,cat,dog\ny.png,sky\n")  # unquoted extra tags
    with pytest.raises(DataError, match="metadata.csv:2: expected 2 fields, got 3"):
        create_dataset("imagefolder", str(d), "train", val_fraction=0.01)
    (d / "metadata.jsonl").write_text("")
    with pytest.raises(DataError, match="holds both metadata.jsonl and metadata.csv"):
        create_dataset("imagefolder", str(d), "train", val_fraction=0.01)
    (d / "metadata.csv").unlink()
    recs = [{"file_name": "x.png", "labels": ["cat"]}, {"file_name": "y.png", "tags": ["dog"]}]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match="two columns \\('labels', 'tags'\\)"):
        create_dataset("imagefolder", str(d), "train", val_fraction=0.01)
    # a root metadata.jsonl whose paths start with split folders is split by them, not at random
    r = _pictures(tmp_path, tmp_path / "root", ["train/a.png", "train/b.png", "test/c.png"])
    recs = [
        {"file_name": n, "labels": [t]}
        for n, t in (("train/a.png", "cat"), ("train/b.png", "dog"), ("test/c.png", "cat"))
    ]
    (r / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    assert sorted(_labels(create_dataset("imagefolder", str(r), "train"))) == ["a.png", "b.png"]
    assert sorted(_labels(create_dataset("imagefolder", str(r), "test"))) == ["c.png"]


def test_planet_through_dataset_auto_splits_tags_on_spaces(source, tmp_path):
    src, rows = source
    root = write_planet(src, rows, tmp_path / "planet")
    assert detect_dataset(str(root))[0] == "tagged"
    ds = create_dataset("tagged", str(root), "train")  # no --tag-separator, as --dataset auto runs it
    assert ds.class_names == list(CLASSES)


def test_onehot_two_files_and_ids_without_extensions(tmp_path):
    d = _pictures(tmp_path, tmp_path / "oh", ["train/a.png", "valid/b.png"])
    (d / "train" / "_classes.csv").write_text("filename,cat,dog\na.png,1,0\n")
    (d / "valid" / "_classes.csv").write_text("filename,cat,dog\nb.png,0,1\n")
    (d / "labels.csv").write_text("filename,cat,dog\ntrain/a.png,0,1\n")
    with pytest.raises(DataError, match="in itself and in its split folders \\(train/, valid/\\)"):
        create_dataset("onehot", str(d), "train")
    with pytest.raises(DataError, match="two label sets"):
        detect_dataset(str(d)) and create_dataset("onehot", str(d), "train")
    # Kaggle: ids without an extension, the pictures in images/
    k = _pictures(tmp_path, tmp_path / "kaggle", ["images/Train_0.png", "images/Train_1.png"])
    (k / "train.csv").write_text("image_id,healthy,rust\nTrain_0,1,0\nTrain_1,0,1\n")
    ds = create_dataset("onehot", str(k / "train.csv"), "train", val_fraction=0.01)
    assert _labels(ds) == {"Train_0.png": ["healthy"], "Train_1.png": ["rust"]}


def test_sidecar_one_tag_a_line_and_extensions_in_any_case(tmp_path):
    d = _pictures(tmp_path, tmp_path / "sc", ["photo.PNG", "other.png"])
    (d / "photo.TXT").write_text("bird\ncat\n")
    (d / "other.txt").write_text("cat, dog")
    assert detect_dataset(str(d))[0] == "sidecar"
    ds = create_dataset("sidecar", str(d), "train", val_fraction=0.01)
    assert _labels(ds) == {"photo.PNG": ["bird", "cat"], "other.png": ["cat", "dog"]}


def test_a_leftover_demo_json_and_split_folders_without_train_labels(tmp_path, capsys):
    from asl.data import inspect

    d = _pictures(tmp_path, tmp_path / "hf", ["x.png", "y.png"])
    (d / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "labels": ["cat"]}) + "\n" for n in ("x.png", "y.png"))
    )
    (d / "demo.json").write_text('{"num_classes": 80}')
    assert detect_dataset(str(d))[0] == "imagefolder"
    rc, out, err = call(inspect.main, [d, "--output", tmp_path / "insp"], capsys)
    assert rc == 0, err
    s = _pictures(tmp_path, tmp_path / "splits", ["train/a.png", "val/b.png"])
    (s / "val" / "_classes.csv").write_text("filename,cat\nb.png,1\n")
    (s / "train" / "a.txt").write_text("cat")
    with pytest.raises(DataError, match="not in train/ \\(train/ holds sidecar; val/ holds onehot"):
        create_dataset("onehot", str(s), "train")
