"""Never lose a run: exact resume, SIGKILL at any moment, SIGTERM, the non-finite guard."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from asl import cli
from asl.checkpoint import load_checkpoint
from asl.engine import NonFiniteLossError, Optimization, StepSettings, train_one_epoch
from tests.helpers import TINY, call, one_error

from .conftest import REPO, make_tagged

pytestmark = pytest.mark.slow  # trains in subprocesses


def _args(data, out, *extra):
    return [
        str(data),
        "--dataset",
        "tagged",
        "--no-pretrained",
        "--model-name",
        "test_resnet",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--workers",
        "0",
        "--augment",
        "cutout_randaugment",
        "--lr",
        "2e-3",
        "--seed",
        "3",
        "--checkpoint-every",
        "5",
        "--ema-decay",
        "0.9",
        "--output",
        str(out),
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import train

    base = tmp_path_factory.mktemp("resume")
    data = make_tagged(base / "data", n_train=120, n_val=16)
    assert cli.run(train.main, _args(data, base / "full")) == 0
    return data, load_checkpoint(base / "full" / "last.pth")


def _assert_same_run(ckpt, ref):
    assert ckpt["global_step"] == ref["global_step"] and ckpt["epoch"] == ref["epoch"] == 2
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            assert torch.equal(ckpt[part][k], v), f"{part}.{k} differs"


def test_resume_at_an_epoch_boundary_is_exact(reference, tmp_path):
    import train

    data, ref = reference
    out = tmp_path / "r"
    assert cli.run(train.main, _args(data, out, "--stop-epoch", "1")) == 0
    assert load_checkpoint(out / "last.pth")["step_in_epoch"] == 0
    assert cli.run(train.main, _args(data, out, "--resume", out / "last.pth")) == 0
    _assert_same_run(load_checkpoint(out / "last.pth"), ref)
    assert [line.count('"epoch"') for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 1, 1]


def _start(data, out):
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *_args(data, out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_mid_epoch_checkpoint(proc, out, min_step=12, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (out / "last.pth").exists():
            try:
                ck = torch.load(out / "last.pth", weights_only=True)
            except (RuntimeError, EOFError, OSError):
                ck = None
            if ck and ck["global_step"] >= min_step and ck["step_in_epoch"]:
                return ck
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def test_sigkill_mid_epoch_then_resume_is_exact(reference, tmp_path):
    import train

    data, ref = reference
    out = tmp_path / "k"
    proc = _start(data, out)
    _wait_for_mid_epoch_checkpoint(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    on_disk = load_checkpoint(out / "last.pth")  # the atomic write left a whole file
    assert on_disk["global_step"] < ref["global_step"]
    assert cli.run(train.main, _args(data, out, "--resume", out / "last.pth")) == 0
    _assert_same_run(load_checkpoint(out / "last.pth"), ref)


def test_sigterm_saves_then_resume_is_exact(reference, tmp_path):
    import train

    data, ref = reference
    out = tmp_path / "t"
    proc = _start(data, out)
    _wait_for_mid_epoch_checkpoint(proc, out, min_step=6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "resume with --resume" in err
    saved = load_checkpoint(out / "last.pth")
    assert saved["global_step"] < ref["global_step"]
    assert cli.run(train.main, _args(data, out, "--resume", out / "last.pth")) == 0
    _assert_same_run(load_checkpoint(out / "last.pth"), ref)


def test_non_finite_losses_stop_the_run_without_an_update():
    model = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.zeros(40, 3))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(logits, targets):
        return (logits * float("nan")).sum()

    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train_one_epoch(
            model, loader, Optimization(nan_loss, opt), torch.device("cpu"), StepSettings(max_nonfinite=3), print_freq=0
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # isolated bad steps are skipped and counted, the run goes on
    calls = {"n": 0}

    def sometimes_nan(logits, targets):
        calls["n"] += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    stats = train_one_epoch(
        model,
        loader,
        Optimization(sometimes_nan, opt),
        torch.device("cpu"),
        StepSettings(max_nonfinite=3),
        print_freq=0,
    )
    assert stats["nonfinite_steps"] == 3 and stats["steps"] == 10


def test_config_round_trip_reproduces_the_run(reference, tmp_path):
    """YAML -> resolved config in the checkpoint -> a new run from it: the same weights."""
    import train
    from asl.config import dump_config, from_dict, load_config

    data, ref = reference
    cfg = from_dict(ref["config"])
    dump_config(cfg, tmp_path / "again.yaml")
    assert load_config(str(tmp_path / "again.yaml")) == cfg
    out = tmp_path / "again"
    assert cli.run(train.main, ["--config", str(tmp_path / "again.yaml"), "--output", str(out)]) == 0
    _assert_same_run(load_checkpoint(out / "last.pth"), ref)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_with_workers_saves(sig, reference, tmp_path):
    """What `timeout`, `kill -TERM -PGID` and Ctrl-C in a terminal do: a signal to every process of
    the run's group. The loader workers live in groups of their own, so only the main process gets
    it: it saves, shuts its workers down and exits 128 + signal."""
    import os

    import train

    data, ref = reference
    out = tmp_path / "g"
    args = _args(data, out)
    args[args.index("--workers") + 1] = "2"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_mid_epoch_checkpoint(proc, out, min_step=6)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "killed by signal" not in err
    assert "resume with --resume" in err
    saved = load_checkpoint(out / "last.pth")
    assert 6 <= saved["global_step"] < ref["global_step"]
    args[args.index("--workers") + 1] = "0"  # in this process: no fork beside JAX's threads
    assert cli.run(train.main, [*args, "--resume", str(out / "last.pth")]) == 0
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def test_resume_of_another_run_names_the_difference(trained_run, tmp_path, capsys):
    last = trained_run["out"] / "last.pth"
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            *TINY,
            "--model-name",
            "resnet10t",
            "--resume",
            last,
            "--output",
            tmp_path / "a",
        ],
        capsys,
    )
    one_error(rc, err, "model test_resnet vs resnet10t")
    assert err == [err[-1]]
    three = make_tagged(tmp_path / "three", classes=("cat", "dog", "sky"))
    same = [*TINY[:-4], "--epochs", "2", "--lr", "3e-3", "--ema-decay", "0.9", "--seed", "1", "--workers", "0"]
    rc, _, err = call(
        "train", [three, "--dataset", "tagged", *same, "--resume", last, "--output", tmp_path / "b"], capsys
    )
    one_error(rc, err, "4 classes vs 3")
    assert "Traceback" not in "\n".join(err) and len(err[-1]) < 400
