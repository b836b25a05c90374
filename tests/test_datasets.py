"""MS-COCO, Pascal VOC and NUS-WIDE loaders on tiny datasets in their exact on-disk layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asl import cli
from asl.data import build_transform, create_dataset
from asl.data.voc import VOC_CLASSES
from asl.errors import DataError

from .conftest import make_coco, make_nuswide, make_tagged, make_voc
from .test_config_cli import assert_one_line_error, run_script


def test_coco_official_semantics(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = create_dataset("coco", str(root), "val", build_transform(False, 32))
    assert ds.class_names == ["kite", "person", "toothbrush"]  # coco.cats order, not sorted ids
    assert len(ds) == 3  # the unannotated image is left out
    np.testing.assert_array_equal(ds.targets, [[0, 1, 1], [1, 0, 0], [0, 1, 0]])
    assert ds.paths[0].endswith("val2014/COCO_val2014_000000000011.jpg")
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and target.tolist() == [0.0, 1.0, 1.0]
    keep = create_dataset("coco", str(root), "val2014", keep_unannotated=True)
    assert len(keep) == 4 and keep.targets[3].sum() == 0


def test_coco_format_json_from_a_labeling_tool(tmp_path):
    root = make_coco(tmp_path / "coco", split="val2017")
    kw = dict(ann_file=str(root / "annotations/instances_val2017.json"), image_dir=str(root / "val2017"))
    ds = create_dataset("coco", str(tmp_path), "all", **kw)
    assert len(ds) == 3 and ds.class_names == ["kite", "person", "toothbrush"]
    train, val = (create_dataset("coco", str(tmp_path), s, **kw) for s in ("train", "val"))  # a seeded split
    assert (len(train), len(val)) == (2, 1) and sorted(train.paths + val.paths) == sorted(ds.paths)
    assert create_dataset("coco", str(root), "val").name == "coco val2017"  # 2017 when only it exists


def test_coco_bad_inputs(tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = root / "annotations/instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 9, "image_id": 22, "category_id": 55, "bbox": [0, 0, 1, 1], "area": 1})
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown category id 55"):
        create_dataset("coco", str(root), "val")
    ann.write_text('{"images": [,}')
    with pytest.raises(DataError, match="malformed JSON"):
        create_dataset("coco", str(root), "val")
    with pytest.raises(DataError, match="instances_train2014.json or instances_train2017.json"):
        create_dataset("coco", str(root), "train")
    with pytest.raises(DataError, match="not found"):
        create_dataset("coco", str(tmp_path / "nowhere"), "val")
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DataError, match="empty"):
        create_dataset("coco", str(root), "val")


@pytest.mark.parametrize("difficult,expected", [("ignore", -1.0), ("positive", 1.0), ("negative", 0.0)])
def test_voc_difficult(tmp_path, difficult, expected):
    root = make_voc(tmp_path / "voc")
    ds = create_dataset("voc", str(root), "trainval", difficult=difficult)
    assert ds.class_names == list(VOC_CLASSES) and len(ds) == 3
    k = {c: i for i, c in enumerate(VOC_CLASSES)}
    t = ds.targets
    assert t[0, k["dog"]] == 1 and t[0, k["person"]] == 1 and t[0].sum() == 2
    assert t[1, k["cat"]] == expected and (np.delete(t[1], k["cat"]) == 0).all()
    assert t[2, k["cat"]] == 1 and t[2, k["car"]] == 1  # a difficult duplicate of an easy object is positive
    assert ds.paths[0].endswith("VOCdevkit/VOC2007/JPEGImages/000001.jpg")


def test_voc_bad_inputs(tmp_path):
    root = make_voc(tmp_path / "voc")
    d = root / "VOCdevkit/VOC2007"
    with pytest.raises(DataError, match="VOC split 'val' not found"):
        create_dataset("voc", str(root), "val")
    (d / "ImageSets/Main/val.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        create_dataset("voc", str(root), "val")
    (d / "Annotations/000004.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match="000004.xml: malformed XML"):
        create_dataset("voc", str(root), "test")
    (d / "Annotations/000004.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        create_dataset("voc", str(root), "test")
    (d / "Annotations/000004.xml").unlink()
    with pytest.raises(DataError, match="annotation not found"):
        create_dataset("voc", str(root), "test")


def test_evaluation_leaves_difficult_labels_out(tmp_path):
    import numpy as np
    import torch

    from asl.engine import evaluate
    from asl.metrics import mAP, mAP_known

    targets = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    data = torch.utils.data.TensorDataset(torch.randn(4, 3), targets)
    model = torch.nn.Linear(3, 2)
    ev = evaluate(model, torch.utils.data.DataLoader(data, batch_size=2), torch.device("cpu"))
    assert ev["mAP"] == mAP_known(ev["targets"], ev["scores"])
    assert ev["per_class_ap"].shape == (2,) and ev["mAP"] == 100 * ev["per_class_ap"].mean()
    assert np.array_equal(ev["targets"], targets.numpy())
    clean = torch.utils.data.TensorDataset(torch.randn(4, 3), targets.clamp(min=0))
    ev = evaluate(model, torch.utils.data.DataLoader(clean, batch_size=2), torch.device("cpu"))
    assert ev["mAP"] == mAP(ev["targets"], ev["scores"])


def test_nuswide(tmp_path):
    root = make_nuswide(tmp_path / "nus")
    tr = create_dataset("nuswide", str(root), "train")
    assert tr.class_names == ["clouds", "sky", "water"] and len(tr) == 3
    np.testing.assert_array_equal(tr.targets, [[1, 1, 0], [0, 0, 0], [0, 1, 1]])  # [] = no label
    va = create_dataset("nuswide", str(root), "val")
    np.testing.assert_array_equal(va.targets, [[0, 0, 1], [0, 1, 0]])
    assert tr.paths[0].endswith("nus/images/a.jpg")


@pytest.mark.parametrize(
    "labels,fragment",
    [
        ("__import__('os').system('echo hi')", "not a list literal"),
        ("['sky'", "not a list literal"),
        ("[1, 2]", "list of names"),
    ],
)
def test_nuswide_labels_are_parsed_safely(tmp_path, labels, fragment):
    root = tmp_path / "nus"
    root.mkdir()
    (root / "nus_wid_data.csv").write_text(f'path,labels,split\nimages/a.jpg,"{labels}",train\n')
    with pytest.raises(DataError, match=fragment):
        create_dataset("nuswide", str(root), "train")


@pytest.mark.parametrize("fmt", ["coco", "voc", "nuswide", "tagged"])
def test_train_one_epoch_per_format(tmp_path, fmt):
    import train

    if fmt == "tagged":
        root = make_tagged(tmp_path / "tagged", n_train=8, n_val=4, split_column=False)
    elif fmt == "coco":
        root = make_coco(tmp_path / "coco", split="train2014")
        make_coco(root, split="val2014")
    elif fmt == "voc":
        root = make_voc(tmp_path / "voc")
    else:
        root = make_nuswide(tmp_path / "nus")
    out = tmp_path / "out"
    rc = cli.run(
        train.main,
        [
            str(root),
            "--dataset",
            fmt,
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "64",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--output",
            str(out),
            "--augment",
            "cutout_randaugment",
        ],
    )
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["train_loss"]) and 0 <= rec["mAP"] <= 100 and rec["bad_images"] == 0


@pytest.mark.slow
def test_corrupt_images_are_counted_across_workers(tmp_path):
    root = make_coco(tmp_path / "coco", split="train2014")
    make_coco(root, split="val2014")
    (root / "train2014/COCO_train2014_000000000022.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "out"
    proc = run_script(
        "train.py",
        root,
        "--dataset",
        "coco",
        "--no-pretrained",
        "--model-name",
        "test_resnet",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--output",
        out,
        "--keep-unannotated",
        "--config",
        _tolerant(tmp_path),
    )  # 4 images: a batch per worker
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["bad_images"] == 1
    assert proc.stderr.count("COCO_train2014_000000000022.jpg") >= 1
    assert_one_line_error(
        run_script(
            "train.py",
            root,
            "--dataset",
            "coco",
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "2",
            "--batch-size",
            "2",
            "--keep-unannotated",
            "--max-bad-images",
            "0",
            "--output",
            tmp_path / "strict",
        ),
        "unreadable",
        after_logs=True,
    )


def _tolerant(tmp_path):
    f = tmp_path / "tolerant.yaml"
    f.write_text("max_bad_fraction: 0.5\nprint_freq: 0\n")
    return f


def test_each_dataset_declares_the_options_it_reads(tmp_path, capsys):
    import train

    # every option a dataset declares is a config field, and the factories take no catch-all
    from asl.config import FIELDS
    from asl.data import DATASET_OPTIONS, DATASETS
    from asl.errors import ConfigError

    assert set(DATASET_OPTIONS) <= set(FIELDS)
    root = make_voc(tmp_path / "voc")
    with pytest.raises(ConfigError, match="dataset voc does not take ann_file"):
        create_dataset("voc", str(root), "test", ann_file="x.json")
    assert create_dataset("voc", str(root), "test", voc_year="2007", difficult="positive").num_classes == 20
    assert DATASETS["coco"].options == (
        "ann_file",
        "image_dir",
        "keep_unannotated",
        "val_ann_file",
        "val_image_dir",
        "val_fraction",
        "seed",
    )
    # on the command line: an option of another dataset is one error line before any work
    out = tmp_path / "out"
    rc = cli.run(
        train.main,
        [
            str(root),
            "--dataset",
            "voc",
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--keep-unannotated",
            "--output",
            str(out),
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2
        and len(err) == 1
        and err[0].startswith("error: --keep-unannotated True is not read by --dataset voc (it is a coco option)")
    )
    assert not out.exists()
    rc = cli.run(train.main, [str(root), "--dataset", "tagged", "--voc-year", "2012", "--output", str(out)])
    assert rc == 2 and "--voc-year '2012' is not read by --dataset tagged" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_is_generated_by_an_explicit_step_only(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO

    root = tmp_path / "demo"
    with pytest.raises(DataError, match="python -m asl.data.demo"):
        create_dataset("demo", str(root), "train", demo_classes=10)
    assert not root.exists()  # building a dataset reads; it never writes
    proc = subprocess.run(
        [sys.executable, "-m", "asl.data.demo", str(root), "--classes", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr
    ds = create_dataset("demo", str(root), "val", demo_classes=10)
    assert ds.num_classes == 10 and len(ds) == 1000
    with pytest.raises(DataError, match="holds the 10-class demo"):
        create_dataset("demo", str(root), "val", demo_classes=80)
