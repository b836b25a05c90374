"""The single-label task: its losses, its metrics against scikit-learn, every layout it reads, the
commands end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from asl.losses import SingleLabelLoss, build_single_label_loss
from asl.metrics import single_label_metrics
from bench.official import official_single_label
from tests.helpers import call, one_error

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _picture(path: Path, k: int, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
    a[8:24, 8:24] = COLOURS[k]
    Image.fromarray(a).save(path)


def lay_out(root: Path, kind: str, n_train=8, n_val=4, seed=0) -> Path:
    """A learnable one-class-per-picture set in ``kind``'s layout."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(CLASSES):
            for i in range(n):
                rel = f"{split}/{c}/{i}.png" if kind == "classfolder" else f"img/{split}_{c}_{i}.png"
                _picture(root / rel, k, rng)
                rows.append((rel, c, split))
    if kind == "tagged":
        with open(root / "labels.csv", "w", newline="") as f:
            csv.writer(f).writerows([("image", "labels", "split"), *rows])
    elif kind == "herbarium":  # train/metadata.json, COCO-style; val is held out of train
        images, anns = [], []
        for i, (rel, c, _) in enumerate(rows):
            new = f"images/{i % 3}/{i}.png"
            (root / "train" / new).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).rename(root / "train" / new)
            images.append({"id": 1000 + i, "file_name": new})
            anns.append({"id": i, "image_id": 1000 + i, "category_id": 7 + CLASSES.index(c)})
        cats = [{"id": 7 + k, "name": c} for k, c in enumerate(CLASSES)][::-1]  # listed out of order
        meta = {"images": images, "annotations": anns, "categories": cats}
        (root / "train" / "metadata.json").write_text(json.dumps(meta))
    elif kind == "imagefolder":
        for split in ("train", "val"):
            recs = [{"file_name": Path(r).name, "label": c} for r, c, s in rows if s == split]
            (root / split).mkdir(exist_ok=True)
            for r, _, s in rows:
                if s == split:
                    (root / r).rename(root / split / Path(r).name)
            (root / split / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    return root


# ------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("saturated", [False, True])
def test_the_single_label_losses_are_their_textbook_forms(saturated):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 7, generator=g, dtype=torch.float64) * (40 if saturated else 2)
    t = torch.randint(0, 7, (16,), generator=g)
    onehot = F.one_hot(t, 7).double()
    ce = build_single_label_loss("ce", label_smoothing=0.0)
    assert torch.allclose(ce(x, onehot), F.cross_entropy(x, t), rtol=1e-12, atol=1e-12)
    smooth = build_single_label_loss("ce", label_smoothing=None)  # unset: 0.1, as timm and the official code
    assert torch.allclose(smooth(x, t), F.cross_entropy(x, t, label_smoothing=0.1), rtol=1e-12, atol=1e-12)
    focal = build_single_label_loss("focal", gamma_pos=2.0)
    p = torch.softmax(x, 1).gather(1, t[:, None])[:, 0]
    want = -((1 - p) ** 2 * torch.log_softmax(x, 1).gather(1, t[:, None])[:, 0]).mean()
    assert torch.allclose(focal(x, onehot), want, rtol=1e-9, atol=1e-12)
    for gp, gn, eps in ((0.0, 4.0, 0.1), (1.0, 4.0, 0.1), (0.0, 0.0, 0.0)):  # official, timm's gamma+, CE
        ours = build_single_label_loss("asl", gamma_pos=gp, gamma_neg=gn, label_smoothing=eps)(x, onehot)
        if not saturated:
            assert torch.allclose(ours, official_single_label(x, t, gp, gn, eps), rtol=1e-10, atol=1e-12)
        assert torch.isfinite(ours)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_stay_finite(dtype):
    x = (torch.randn(8, 5) * 30).to(dtype).requires_grad_()
    loss = SingleLabelLoss(0.0, 4.0, 0.1)(x, torch.randint(0, 5, (8,)))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_the_metrics_equal_scikit_learns():
    from sklearn.metrics import balanced_accuracy_score, f1_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    for n, c in ((300, 12), (50, 30)):
        truth = rng.integers(0, c, n)
        scores = rng.random((n, c))
        scores[np.arange(n)[: n // 3], truth[: n // 3]] += 0.5  # a third right
        top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        m = single_label_metrics(truth, top, c)
        pred = top[:, 0]
        assert m["top1"] == pytest.approx(100 * (pred == truth).mean())
        assert m["top5"] == pytest.approx(100 * top_k_accuracy_score(truth, scores, k=5, labels=range(c)))
        assert m["macro_f1"] == pytest.approx(100 * f1_score(truth, pred, average="macro", zero_division=0))
        assert m["balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(truth, pred))


# ---------------------------------------------------------------------------------- end to end

TINY = ["--no-pretrained", "--model-name", "test_resnet", "--image-size", "32", "--batch-size", "8"]
TINY += ["--epochs", "1", "--workers", "0", "--lr", "3e-3"]


@pytest.mark.parametrize("kind", ["classfolder", "tagged", "imagefolder", "herbarium"])
def test_each_layout_trains_and_validates(kind, tmp_path, capsys):
    data = lay_out(tmp_path / "data", kind)
    argv = [data, "--dataset", "auto", "--task", "single-label", *TINY, "--output", tmp_path / "run"]
    rc, out, err = call("train", argv, capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"top1", "top5", "macro_f1", "balanced_accuracy"} <= set(rec)
    ckpt = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert ckpt["task"] == "single_label" and ckpt["config"]["task"] == "single_label"
    assert "id='confusions'" in (tmp_path / "run" / "report.html").read_text()
    rc, out, err = call(
        "validate",
        [data, "--model-path", tmp_path / "run" / "best.pth", "--workers", "0", "--output", tmp_path / "val"],
        capsys,
    )
    assert rc == 0, err
    m = json.loads((tmp_path / "val" / "metrics.json").read_text())
    scores, truth = np.load(tmp_path / "val" / "scores.npy"), np.load(tmp_path / "val" / "targets.npy")
    n = 60 * 0.2 if kind == "herbarium" else 20  # herbarium: a fifth of its 60 labelled images held out
    assert scores.shape == (n, 5) and truth.shape == (n,)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)  # softmax probabilities
    assert m["top1"] == pytest.approx(100 * (scores.argmax(1) == truth).mean())
    assert f"top-1 {m['top1']:.2f}" in out


def test_infer_and_the_onnx_export_agree_on_the_top_classes(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = lay_out(tmp_path / "data", "classfolder", n_train=4, n_val=2)
    assert (
        call(
            "train",
            [data, "--task", "single-label", "--dataset", "classfolder", *TINY, "--output", tmp_path / "run"],
            capsys,
        )[0]
        == 0
    )
    model = tmp_path / "run" / "best.pth"
    rc, _, err = call("export", ["--model-path", model, "--output", tmp_path / "m.onnx"], capsys)
    assert rc == 0, err
    pics = sorted((data / "val").rglob("*.png"))
    got = []
    for m in (model, tmp_path / "m.onnx"):
        rc, out, err = call("infer", ["--model-path", m, "--pic-path", *pics, "--json", "--top-k", "5"], capsys)
        assert rc == 0, err
        got.append(json.loads(out))
    for a, b in zip(*got):
        assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
        assert sum(x["score"] for x in a["labels"]) == pytest.approx(1.0, abs=1e-3)  # all 5 classes
    from asl.images import load_rgb
    from asl.opening import open_model

    pictures = [load_rgb(p) for p in pics]
    torch_p, onnx_p = (open_model(str(m), device="cpu").scores(pictures) for m in (model, tmp_path / "m.onnx"))
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)  # the same probabilities
    assert (onnx_p.argmax(1) == torch_p.argmax(1)).all()


def test_bad_single_label_input_is_one_error_line(tmp_path, capsys, trained_run):
    two = lay_out(tmp_path / "two", "tagged", n_train=3, n_val=2)
    rows = (two / "labels.csv").read_text().splitlines()
    rows[1] = rows[1].replace(",ant,", ',"ant|bee",')
    (two / "labels.csv").write_text("\n".join(rows) + "\n")
    rc, _, err = call(
        "train", [two, "--dataset", "tagged", "--task", "single-label", *TINY, "--output", tmp_path / "r1"], capsys
    )
    one_error(rc, err, "one class per image")
    assert not (tmp_path / "r1").exists()
    rc, _, err = call(
        "validate",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            "--model-path",
            trained_run["out"] / "best.pth",
            "--task",
            "single-label",
        ],
        capsys,
    )
    one_error(rc, err, "is a multi-label model")
    empty = lay_out(tmp_path / "empty", "classfolder", n_train=2, n_val=1)
    (empty / "train" / "fox").mkdir()
    rc, _, err = call("train", [empty, "--dataset", "classfolder", "--task", "single-label", *TINY], capsys)
    one_error(rc, err, "a class folder with no picture")
    deep = lay_out(tmp_path / "deep", "classfolder", n_train=2, n_val=1)
    (deep / "train" / "ant" / "more").mkdir()
    rc, _, err = call("train", [deep, "--dataset", "classfolder", "--task", "single-label", *TINY], capsys)
    one_error(rc, err, "a folder inside a class folder")
    rc, _, err = call("train", [deep, "--dataset", "classfolder", "--loss", "ce", *TINY], capsys)
    one_error(rc, err, "--loss ce is a single-label loss")


def test_the_herbarium_recipe_names_a_start_timm_lists_and_builds_its_loss():
    import timm

    from asl.builders import loss_from_config
    from asl.checks import check_loss_options
    from asl.config import TRAIN, check_values, fields_for, load_config
    from tests.helpers import REPO

    cfg = load_config(str(REPO / "configs" / "herbarium_tresnet_m_448.yaml"))
    assert cfg.task == "single_label" and cfg.dataset == "herbarium" and cfg.pretrained
    assert cfg.model_name in timm.list_pretrained(cfg.model_name.split(".")[0] + ".*")
    check_values(cfg, fields_for(TRAIN))
    check_loss_options(cfg)
    loss = loss_from_config(cfg)
    assert isinstance(loss, SingleLabelLoss) and (loss.gamma_pos, loss.gamma_neg, loss.label_smoothing) == (0, 4, 0.1)


def test_the_single_label_demo_is_long_tailed_with_one_class_per_picture(tmp_path):
    from asl.data import create_dataset
    from asl.data.demo import generate_demo

    root = generate_demo(tmp_path / "d", num_train=400, num_val=50, image_size=32, single_label=True)
    ds = create_dataset("demo", str(root), "train")
    assert (ds.labels.positives_per_image() == 1).all()
    counts = np.sort(ds.labels.positives())[::-1]
    assert counts[0] >= 10 * max(counts[-1], 1)  # the commonest class far above the rarest
    from asl.data.inspect import format_inspection, inspect_dataset

    r = inspect_dataset(str(root), read_images=False)
    assert r.suggestion["flags"] == "--task single-label" and r.long_tail["head_share"] > 0.4
    assert "long tail: the commonest 20% of the classes hold" in format_inspection(r)
