"""asl.partial: the partial-label loss and its CSL modes equal the official formula (value and gradient,
float64, every mode; selective with and without a class prior), and read nothing back off the device."""

from __future__ import annotations

import pytest
import torch

from asl.partial import PARTIAL_MODES, PartialAsymmetricLoss, partial_asymmetric_loss
from bench.official import official_partial_loss


def _batch(n=6, c=9, seed=0, unknown=0.6):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).requires_grad_()
    r = torch.rand(n, c, generator=g)
    t = torch.where(r < unknown, -1.0, torch.where(r < unknown + 0.15, 1.0, 0.0)).double()
    return x, t


SETTINGS = [
    dict(),
    dict(clip=0.05, gamma_pos=1.0, gamma_neg=4.0, gamma_unann=4.0),
    dict(alpha_pos=2.0, alpha_neg=0.5, alpha_unann=0.25, gamma_neg=3.0),
    dict(likelihood_topk=1),
    dict(likelihood_topk=50),  # more than the batch's unknown labels: all of them are ignored
]


@pytest.mark.parametrize("mode", PARTIAL_MODES)
@pytest.mark.parametrize("kw", SETTINGS, ids=range(len(SETTINGS)))
def test_every_mode_equals_the_official_formula_in_float64(mode, kw):
    x, t = _batch()
    ours = partial_asymmetric_loss(x, t, mode, **kw)
    (g_ours,) = torch.autograd.grad(ours, x)
    want = official_partial_loss(x, t, mode, **kw)
    (g_want,) = torch.autograd.grad(want, x)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threshold", [0.05, 0.5])
def test_selective_with_a_class_prior_equals_the_official_formula(threshold):
    x, t = _batch(seed=1)
    prior = torch.linspace(0.0, 1.0, t.shape[1])
    kw = dict(gamma_unann=4.0, likelihood_topk=1)  # one likely positive per image: the prior decides the rest
    loss = PartialAsymmetricLoss("selective", prior=prior, prior_threshold=threshold, **kw)
    ours = loss(x, t)
    want = official_partial_loss(x, t, "selective", prior=prior, prior_threshold=threshold, **kw)
    torch.testing.assert_close(ours.double(), want, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, x)
    (g_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(g_ours, g_want, rtol=1e-12, atol=1e-12)
    # the prior matters: without it, other unknown labels are kept
    assert not torch.allclose(PartialAsymmetricLoss("selective", **kw)(x, t), ours)


def test_the_modes_differ_only_on_unknown_labels():
    x, t = _batch(seed=2)
    full = torch.where(t == -1, 0.0, t)  # every label annotated: the modes agree (but for the normalisation)
    values = {m: partial_asymmetric_loss(x.detach(), full, m) for m in ("negative", "ignore", "selective")}
    assert len({round(float(v), 10) for v in values.values()}) == 1
    assert partial_asymmetric_loss(x, t, "ignore") < partial_asymmetric_loss(x, t, "negative")


def test_float32_and_half_inputs_and_a_bad_mode():
    x, t = _batch()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        v = partial_asymmetric_loss(x.detach().to(dtype), t.to(dtype), "selective")
        assert v.dtype == torch.float32 and torch.isfinite(v)
    with pytest.raises(ValueError, match="partial_loss_mode must be one of"):
        PartialAsymmetricLoss("hopeful")


def test_no_value_is_read_back_on_the_meta_device():
    """On PyTorch's meta device any read-back raises: every mode, the top-k included, stays on the device."""
    x = torch.empty(4, 7, device="meta", requires_grad=True)
    t = torch.empty(4, 7, device="meta")
    for mode in PARTIAL_MODES:
        loss = partial_asymmetric_loss(x, t, mode, prior=torch.zeros(7), prior_threshold=0.5)
        loss.backward()
    with pytest.raises(Exception):  # noqa: B017  (the control: a read-back does raise there)
        float(torch.empty((), device="meta"))


def _partial_set(root):
    """A one-hot set whose empty cells are unknown labels (-1)."""
    import csv

    from tests.conftest import make_tagged

    src = make_tagged(root / "src", n_train=24, n_val=12)
    rows = list(csv.DictReader(open(src / "labels.csv")))
    classes = ["cat", "dog", "sky", "tree"]
    (root / "d").mkdir()
    with open(root / "d" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *classes])
        for i, r in enumerate(rows):
            tags = set(r["labels"].split("|"))
            # every third label of the training images unknown; the validation images fully labelled but one class
            cells = [
                "" if (i < 24 and (i + k) % 3 == 0) or (i >= 24 and k == 3) else str(int(c in tags))
                for k, c in enumerate(classes)
            ]
            w.writerow([r["image"], *cells])
    import shutil

    shutil.copytree(src / "img", root / "d" / "img")
    return root / "d"


@pytest.mark.parametrize("mode", PARTIAL_MODES)
def test_train_in_each_unknown_label_mode(mode, tmp_path, capsys):
    from tests.helpers import TINY, call

    data = _partial_set(tmp_path)
    argv = [data, "--dataset", "onehot", *TINY, "--unknown-labels", mode, "--output", tmp_path / "run"]
    rc, _, err = call("train", argv, capsys)
    assert rc == 0, err
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert f"unknown_labels: {mode}" in cfg
    assert (tmp_path / "run" / "best.pth").is_file()


def test_a_prior_written_by_validate_drives_selective_training(trained_run, tmp_path, capsys):
    from tests.helpers import TINY, call, one_error

    prior = tmp_path / "prior.csv"
    rc, out, err = call(
        "validate",
        [trained_run["data"], "--model-path", trained_run["out"] / "best.pth", "--write-prior", prior],
        capsys,
    )
    assert rc == 0, err
    lines = prior.read_text().splitlines()
    assert lines[0] == "Classes,avg_pred" and [ln.split(",")[0] for ln in lines[1:]] == ["cat", "dog", "sky", "tree"]
    assert all(0 <= float(ln.split(",")[1]) <= 1 for ln in lines[1:])
    argv = [trained_run["data"], "--dataset", "tagged", *TINY, "--output", tmp_path / "run"]
    rc, _, err = call(
        "train", [*argv, "--unknown-labels", "selective", "--prior-file", prior, "--prior-threshold", "0.3"], capsys
    )
    assert rc == 0, err
    # bad input, one line each, before any work
    (tmp_path / "other.csv").write_text("Classes,avg_pred\ncat,0.1\nhorse,0.2\n")
    for extra, fragment in (
        (["--gamma-unann", "3"], "--gamma-unann 3.0 is not read by --loss asl"),
        (["--unknown-labels", "negative", "--prior-file", prior], "--prior-file"),
        (["--unknown-labels", "selective", "--loss", "focal"], "trains the partial-label ASL"),
        (["--unknown-labels", "selective", "--prior-file", tmp_path / "other.csv"], "holds another class list"),
        (["--unknown-labels", "hopeful"], "--unknown-labels must be one of"),
    ):
        rc, _, err = call("train", [*argv[:-1], tmp_path / "bad", *extra], capsys)
        one_error(rc, err, fragment)
    assert not (tmp_path / "bad").exists()
