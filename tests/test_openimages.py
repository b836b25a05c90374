"""asl.data.openimages and sparse labels: a tiny Open Images folder under the official file names
(positives, verified negatives, unknown labels, both class-description formats, a trainable list)
read into the 1 / 0 / -1 targets it holds, without an (N, C) array; trained in each unknown-label
mode; validated with the labelled-only mAP; its bad input as one error line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asl.data import create_dataset
from asl.data.detect import detect_dataset
from asl.data.labels import SparseLabels
from asl.errors import DataError
from tests.helpers import TINY, call, one_error

MIDS = ["/m/01", "/m/02", "/m/03", "/m/04"]
NAMES = {"/m/01": "Cat", "/m/02": "Dog", "/m/03": "Sky", "/m/04": "Dog"}  # a display name twice
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def lay_out(root: Path, n_train=32, n_test=16, seed=0, header=True):
    """Open Images' files for a learnable set: class k paints a quadrant; about a third of the
    (image, class) pairs are labelled (a positive or a verified negative), the rest unknown."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    with open(root / ("oidv6-class-descriptions.csv" if header else "class-descriptions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["LabelName", "DisplayName"])
        w.writerows([m, NAMES[m]] for m in MIDS)
        w.writerow(["/m/99", "Not trainable"])
    (root / "classes-trainable.txt").write_text("".join(m + "\n" for m in MIDS))
    truth = {}
    for split, n, fname in (
        ("train", n_train, "oidv6-train-annotations-human-imagelabels.csv"),
        ("test", n_test, "test-annotations-human-imagelabels.csv"),
    ):
        (root / split).mkdir()
        rows = []
        for i in range(n):
            # train: Open Images' own ids (16 hex digits, read as numbers); test: ids of another form
            image_id = f"{i * 7919 + 1:016x}" if split == "train" else f"te-{i:05d}"
            arr = rng.integers(0, 40, size=(32, 32, 3)).astype(np.uint8)
            present = [k for k in range(4) if rng.random() < 0.4]
            for k in present:
                y0, x0 = (k // 2) * 16, (k % 2) * 16
                arr[y0 : y0 + 16, x0 : x0 + 16] = COLOURS[k]
            Image.fromarray(arr).save(root / split / f"{image_id}.jpg", quality=95)
            row = np.full(4, -1.0, dtype=np.float32)
            for k in range(4):
                if k in present and rng.random() < 0.8:
                    row[k] = 1.0
                elif k not in present and rng.random() < 0.5:
                    row[k] = 0.0
            if not (row >= 0).any():
                row[0] = 1.0 if 0 in present else 0.0
            for k in np.flatnonzero(row >= 0):
                rows.append([image_id, "verification", MIDS[k], int(row[k])])
            if i == 0:  # a label the class list does not hold: left out, and counted
                rows.append([image_id, "verification", "/m/99", 1])
            truth[(split, image_id)] = row
        with open(root / fname, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageID", "Source", "LabelName", "Confidence"])
            w.writerows(rows)
    return truth


@pytest.fixture(scope="module")
def oi(tmp_path_factory):
    root = tmp_path_factory.mktemp("oi") / "openimages"
    return root, lay_out(root)


def test_the_targets_are_the_labels_written_and_held_sparse(oi, caplog):
    root, truth = oi
    assert detect_dataset(str(root))[0] == "openimages"
    for split in ("train", "test"):
        ds = create_dataset("openimages", str(root), split)
        assert isinstance(ds.labels, SparseLabels)
        # nothing of the dataset is an (N, C) array
        assert not any(isinstance(v, np.ndarray) and v.ndim == 2 for v in vars(ds).values())
        assert not any(isinstance(v, np.ndarray) and v.ndim == 2 for v in vars(ds.labels).values())
        assert ds.class_names == ["Cat", "Dog (/m/02)", "Sky", "Dog (/m/04)"]
        for i, path in enumerate(ds.paths):
            image_id = Path(path).stem
            assert np.array_equal(ds.labels.row(i), truth[(split, image_id)]), image_id
            assert np.array_equal(ds[i][1].numpy(), truth[(split, image_id)])
    assert "1 rows of 1 MIDs not in the class list are left out (first: /m/99)" in caplog.text


def test_the_old_descriptions_format_and_no_trainable_list(tmp_path):
    root = tmp_path / "oi"
    truth = lay_out(root, n_train=12, n_test=6, header=False)
    (root / "classes-trainable.txt").unlink()
    ds = create_dataset("openimages", str(root), "test")
    # without the trainable list: the MIDs with a positive in the training labels, sorted (/m/99 has one)
    from asl.data.openimages import display_names

    mids = sorted({MIDS[k] for (s, _), row in truth.items() if s == "train" for k in np.flatnonzero(row == 1)})
    mids = sorted({*mids, "/m/99"})
    assert ds.class_names == display_names(mids, {**NAMES, "/m/99": "Not trainable"})
    assert len(ds) == sum(1 for s, _ in truth if s == "test")


@pytest.mark.parametrize("mode", ["negative", "ignore", "selective"])
def test_train_one_epoch_in_each_unknown_label_mode(mode, oi, tmp_path, capsys):
    root, _ = oi
    argv = [root, "--dataset", "openimages", *TINY, "--unknown-labels", mode, "--output", tmp_path / "run"]
    rc, _, err = call("train", argv, capsys)
    assert rc == 0, err
    assert (tmp_path / "run" / "best.pth").is_file()


@pytest.fixture(scope="module")
def oi_run(oi, tmp_path_factory):
    from asl.train import main

    out = tmp_path_factory.mktemp("oi_run") / "run"
    assert main([str(oi[0]), "--dataset", "openimages", *map(str, TINY), "--output", str(out)]) == 0
    return out / "best.pth"


def _validate(root, model, out, capsys, *extra):
    rc, stdout, err = call("validate", [root, "--model-path", model, "--workers", "0", "--output", out, *extra], capsys)
    assert rc == 0, err
    return json.loads((out / "metrics.json").read_text()), stdout


def test_validate_scores_labelled_entries_only(oi, oi_run, tmp_path, capsys):
    """The mAP of a split with unknown labels: each class's AP over its labelled entries, classes
    without a positive left out (Google's rule), checked against scikit-learn on the same entries."""
    from sklearn.metrics import average_precision_score

    root, truth = oi
    metrics, out = _validate(root, oi_run, tmp_path / "val", capsys)
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    scores = np.load(tmp_path / "val" / "scores.npy")
    targets = np.load(tmp_path / "val" / "targets.npy")
    assert (targets == -1).any() and (targets == 0).any()
    aps = []
    for k in range(targets.shape[1]):
        known = targets[:, k] >= 0
        if (targets[known, k] == 1).any():
            aps.append(average_precision_score(targets[known, k] == 1, scores[known, k]))
    assert metrics["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-6)
    assert metrics["classes_scored"] == len(aps)
    assert f"mAP {metrics['mAP']:.2f}" in out


def test_past_the_dense_limit_labelled_entries_only_and_the_same_figures(oi, oi_run, tmp_path, capsys, monkeypatch):
    """A split too large for (N, C) arrays (here: a limit of 0) keeps the scores of its labelled entries
    only; the metrics, the calibrated thresholds and the class prior are the dense run's, and
    ``--output`` holds the entries, which the report is drawn from."""
    import torch

    from asl.labelled import LabelledScores

    root, _ = oi
    extra = ("--calibrate", "--write-prior")
    dense, _ = _validate(root, oi_run, tmp_path / "dense", capsys, *extra, tmp_path / "dense_prior.csv")
    monkeypatch.setattr("asl.labelled.DENSE_LIMIT", 0)
    sparse, _ = _validate(root, oi_run, tmp_path / "sparse", capsys, *extra, tmp_path / "sparse_prior.csv")
    dense.pop("mAP_unknown_as_negative")  # the official reading of -1 as negative needs the dense arrays
    assert sparse == dense
    assert not (tmp_path / "sparse" / "scores.npy").exists()
    monkeypatch.undo()
    lab = LabelledScores.load(tmp_path / "sparse" / "labelled_scores.npz")
    targets = np.load(tmp_path / "dense" / "targets.npy")
    scores = np.load(tmp_path / "dense" / "scores.npy")
    t, s = lab.dense()
    np.testing.assert_array_equal(t, targets)
    np.testing.assert_array_equal(s[targets != -1], scores[targets != -1])
    assert len(lab) == int((targets != -1).sum()) < targets.size
    thresholds = [
        torch.load(tmp_path / run / "calibrated.pth", weights_only=True)["thresholds"] for run in ("dense", "sparse")
    ]
    assert thresholds[0] == thresholds[1] and len(thresholds[0]) == 4
    for run in ("dense", "sparse"):
        page = (tmp_path / run / "report.html").read_text()
        assert all(f"id='{sec}'" in page for sec in ("per-class-ap", "pr-curves", "contact-sheet"))
    dense_prior = (tmp_path / "dense_prior.csv").read_text().splitlines()
    sparse_prior = (tmp_path / "sparse_prior.csv").read_text().splitlines()
    assert dense_prior[0] == sparse_prior[0] == "Classes,avg_pred"
    np.testing.assert_allclose(
        [float(x.rsplit(",", 1)[1]) for x in sparse_prior[1:]], [float(x.rsplit(",", 1)[1]) for x in dense_prior[1:]]
    )


def test_bad_label_files_are_one_error_line(tmp_path, capsys):
    cases = {
        "columns": ("ImageID,LabelName,Confidence\nx,/m/01,1\n", "columns ['ImageID', 'LabelName', 'Confidence']"),
        "fractions": ("ImageID,Source,LabelName,Confidence\nx,machine,/m/01,0.7\n", "Confidence 0.7"),
        "clash": ("ImageID,Source,LabelName,Confidence\nx,h,/m/01,1\nx,h,/m/01,0\n", "labelled both 1 and 0"),
        "nothing": ("ImageID,Source,LabelName,Confidence\nx,h,/m/99,1\n", "no labelled entry"),
    }
    for name, (text, fragment) in cases.items():
        root = tmp_path / name
        root.mkdir()
        (root / "classes-trainable.txt").write_text("/m/01\n")
        (root / "oidv6-train-annotations-human-imagelabels.csv").write_text(text)
        (root / "test-annotations-human-imagelabels.csv").write_text(text)
        rc, _, err = call("train", [root, "--dataset", "openimages", *TINY, "--output", tmp_path / "o"], capsys)
        one_error(rc, err, fragment)
    (tmp_path / "columns" / "oidv6-class-descriptions.csv").write_text("id;name\n1;cat\n")
    with pytest.raises(DataError, match="not a class-descriptions CSV"):
        from asl.data.openimages import read_descriptions

        read_descriptions(tmp_path / "columns")
    assert not (tmp_path / "o").exists()


def test_sparse_labels_take_and_dense_agree():
    rng = np.random.default_rng(0)
    dense = rng.choice([-1.0, 0.0, 1.0], size=(50, 7), p=[0.6, 0.25, 0.15]).astype(np.float32)
    img, cls = np.nonzero(dense >= 0)
    labels = SparseLabels.from_entries(50, 7, img, cls, dense[img, cls].astype(np.int8))
    assert np.array_equal(labels.dense(), dense)
    rows = [3, 0, 49, 3]
    assert np.array_equal(labels.take(rows).dense(), dense[rows])
    assert np.array_equal(labels.positives(), (dense == 1).sum(0))
    assert np.array_equal(labels.labelled(), (dense >= 0).sum(0))
    assert labels.unknown() == int((dense == -1).sum())


@pytest.mark.parametrize(
    "name", ["openimages_tresnet_l_448", "openimages_ml_decoder_tresnet_m_224", "openimages_csl_tresnet_m_224"]
)
def test_the_open_images_recipes_name_a_start_timm_lists_and_pass_the_checks(name):
    import timm

    from asl.checks import check_loss_options
    from asl.config import TRAIN, check_values, fields_for, load_config
    from tests.helpers import REPO

    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert cfg.dataset == "openimages" and cfg.pretrained
    assert cfg.model_name in timm.list_pretrained(cfg.model_name.split(".")[0] + ".*")
    check_values(cfg, fields_for(TRAIN))
    check_loss_options(cfg)
    if "csl" in name:
        assert (cfg.unknown_labels, cfg.gamma_unann, cfg.likelihood_topk, cfg.prior_threshold) == (
            "selective",
            4,
            5,
            0.5,
        )


@pytest.mark.slow
def test_a_million_image_index_stays_far_below_the_dense_matrix(tmp_path):
    """1,000,000 images x 9,605 classes, about 6.5 labels each: the index is built in a fresh process
    whose peak memory grows by under 0.75 GiB past its imports (the dense float32 matrix alone would
    take 36 GiB), and its arrays are one-dimensional."""
    import json
    import subprocess
    import sys

    from bench.bench_scale import write_csv
    from tests.helpers import REPO

    path = tmp_path / "oidv6-train-annotations-human-imagelabels.csv"
    rows = write_csv(path, 1_000_000)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_scale.py"), "--build", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["images"] == 1_000_000 and r["entries"] == rows
    assert r["peak"] - r["before"] < 0.75 * 2**30 < 1_000_000 * 9605 * 4
    assert r["index_bytes"] < 100 * 2**20


def test_without_a_trainable_list_the_checkpoints_order_is_the_class_list(tmp_path):
    root = tmp_path / "oi"
    truth = lay_out(root, n_train=4, n_test=8)
    (root / "classes-trainable.txt").unlink()
    # a checkpoint's names: a display name, a MID, a told-apart name, a name two MIDs share
    ds = create_dataset("openimages", str(root), "test", class_order=["Sky", "/m/01", "Dog (/m/04)", "Dog"])
    assert ds.class_names == ["Sky", "Cat", "Dog (/m/04)", "Dog (/m/02)"]
    perm = [2, 0, 3, 1]  # those classes in the files' MID order
    for i, path in enumerate(ds.paths):
        assert np.array_equal(ds.labels.row(i), truth[("test", Path(path).stem)][perm])
    with pytest.raises(DataError, match="1 of its 2 class names are neither a MID nor a display name"):
        create_dataset("openimages", str(root), "test", class_order=["Cat", "Horse"])


def test_a_checkpoint_naming_display_names_or_mids_validates_on_the_mids(oi, oi_run, tmp_path, capsys):
    """Official Open Images checkpoints name their classes by display name (which repeat) or MID: they
    are matched to the data's classes through the descriptions, in any order."""
    import torch

    root, _ = oi
    reference, _ = _validate(root, oi_run, tmp_path / "ref", capsys)
    ckpt = torch.load(oi_run, weights_only=True)
    for tag, names in (("plain", ["Cat", "Dog", "Sky", "Dog"]), ("mids", MIDS)):
        ckpt["idx_to_class"] = dict(enumerate(names))
        torch.save(ckpt, tmp_path / f"{tag}.pth")
        got, _ = _validate(root, tmp_path / f"{tag}.pth", tmp_path / tag, capsys)
        assert got["mAP"] == reference["mAP"] and got["per_class_ap"] == reference["per_class_ap"]


def test_infer_shows_mids_as_display_names(oi, oi_run, tmp_path, capsys):
    import torch

    root, _ = oi
    ckpt = torch.load(oi_run, weights_only=True)
    ckpt["idx_to_class"] = dict(enumerate(MIDS))
    torch.save(ckpt, tmp_path / "mids.pth")
    picture = next((root / "test").iterdir())
    argv = ["--model-path", tmp_path / "mids.pth", "--pic-path", picture, "--th", "0", "--json"]
    rc, out, err = call("infer", [*argv, "--class-descriptions", root / "oidv6-class-descriptions.csv"], capsys)
    assert rc == 0, err
    labels = {lab["label"] for lab in json.loads(out)[0]["labels"]}
    assert labels == {"Cat", "Dog (/m/02)", "Sky", "Dog (/m/04)"}
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    rc, out, err = call("infer", [*argv, "--class-descriptions", tmp_path / "bad.csv"], capsys)
    one_error(rc, err, "not a class-descriptions CSV")
    assert out == ""


@pytest.mark.parametrize("ids", ["hex", "names"])
def test_the_index_is_the_same_whatever_the_batches_and_the_row_order(tmp_path, monkeypatch, ids):
    """Files grouped by image are indexed batch by batch (an image's rows may straddle two batches);
    files in another order are sorted whole; the order breaking after some batches too: one index."""
    from asl.data import openimages

    rng = np.random.default_rng(3)
    c = 7
    index = {f"/m/{k}": k for k in range(c)}
    rows = []
    for i in range(120):
        image_id = f"{i * 7919 + 5:016x}" if ids == "hex" else f"img-{i:04d}"
        for k in rng.choice(c, size=int(rng.integers(1, 5)), replace=False):
            rows.append([image_id, "verification", f"/m/{k}", int(rng.random() < 0.5)])
        if i == 7:  # a repeated row with the same label counts once
            rows.append(list(rows[-1]))
    rows.append(["zzzz-odd" if ids == "names" else f"{10**6:016x}", "verification", "/m/99", 1])  # left out

    def index_of(ordered, name, block=None):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageID", "Source", "LabelName", "Confidence"])
            w.writerows(ordered)
        if block:
            monkeypatch.setattr(openimages, "BLOCK_SIZE", block)
        out = openimages.read_image_labels(path, index)
        monkeypatch.setattr(openimages, "BLOCK_SIZE", 2 << 20)
        return out

    def as_dict(ids_, labels):
        return {bytes(i) if ids_.dtype != np.uint64 else int(i): tuple(labels.row(n)) for n, i in enumerate(ids_)}

    ref_ids, ref, left = index_of(rows, "whole.csv")
    assert left == {"/m/99": 1} and len(ref_ids) == 120
    assert ref.pos_indices.dtype == np.int32 and len(ref.pos_indices) + len(ref.neg_indices) == len(rows) - 2
    small_ids, small, _ = index_of(rows, "small.csv", block=300)  # dozens of batches
    np.testing.assert_array_equal(small_ids, ref_ids)
    for f in ("pos_indptr", "pos_indices", "neg_indptr", "neg_indices"):
        np.testing.assert_array_equal(getattr(small, f), getattr(ref, f))
    shuffled = [rows[k] for k in rng.permutation(len(rows))]
    late = rows[:200] + rows[200:][::-1]  # in order for some batches, then not
    for name, ordered in (("shuffled.csv", shuffled), ("late.csv", late)):
        got_ids, got, _ = index_of(ordered, name, block=300)
        assert as_dict(got_ids, got) == as_dict(ref_ids, ref), name
    clash = rows[:30] + [[rows[29][0], "verification", rows[29][2], 1 - rows[29][3]]] + rows[30:]
    with pytest.raises(DataError, match="labelled both 1 and 0"):
        index_of(clash, "clash.csv", block=300)
