"""Where commands write (asl.files, asl.rundir, asl.trainer): never into a user's folder, one run per folder,
a full disk or read-only folder is one error line, no temporary or empty folder left behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asl import cli
from asl.errors import ConfigError, Interrupted, OutputError
from asl.files import atomic_write, remove_stale_temporaries
from asl.outputs import TRAINING
from asl.rundir import RunLock, check_folder
from asl.trainer import StopSignal
from tests.conftest import REPO, make_tagged
from tests.helpers import TINY, call, one_error, tree_digest


def test_a_run_never_writes_into_its_data_folder(tmp_path, capsys):
    data = make_tagged(tmp_path / "D", n_train=8, n_val=4)
    (data / "config.yaml").write_text("mine: 1\n")
    (data / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = tree_digest(data)
    for output in (data, data / "runs" / "x"):
        for extra in ([], ["--overwrite"]):
            rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", output, *extra], capsys)
            one_error(rc, err, "a run never writes into its data")
    assert tree_digest(data) == before and not (data / "runs").exists()


def test_overwrite_replaces_only_a_runs_own_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine: 1\n")
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="no run wrote"):
        check_folder(mine, TRAINING, overwrite=True)
    (mine / "notes.txt").unlink()
    (mine / "labels.csv").write_text("image,labels\n")
    with pytest.raises(ConfigError, match="holds a dataset"):
        check_folder(mine, TRAINING, overwrite=True)
    run = tmp_path / "run"
    run.mkdir()
    for f in ("config.yaml", "metrics.jsonl", "best.pth", ".last.pth.abc123.tmp", ".asl-run.lock"):
        (run / f).write_text("x")
    with pytest.raises(ConfigError, match="already holds a run"):
        check_folder(run, TRAINING, overwrite=False)
    check_folder(run, TRAINING, overwrite=True)  # a run's own files: replaced on request


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_is_refused(tmp_path):
    data = make_tagged(tmp_path / "d", n_train=64, n_val=16)
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(REPO / "train.py"),
        str(data),
        "--dataset",
        "tagged",
        *TINY[:-4],
        "--epochs",
        "3",
        "--workers",
        "0",
        "--output",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists() and time.time() < deadline:  # the first is training
        time.sleep(0.2)
    assert (out / "config.yaml").exists()
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and lines[-1].startswith("error: "), second.stderr
    assert "another run is writing" in lines[-1] or "already holds a run" in lines[-1]
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3  # the first run's files, intact


def test_the_lock_is_exclusive_and_goes_with_its_holder(tmp_path):
    lock = RunLock(tmp_path)
    with pytest.raises(ConfigError, match=f"another run is writing into {tmp_path} \\(pid {os.getpid()}\\)"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()  # free again; a killed holder's lock is dropped by the kernel the same way


def _full_disk(monkeypatch, after: int = 0):
    """Writes through atomic_write fail with ENOSPC once ``after`` bytes are written."""
    import asl.files as files

    real = files._Recording.write
    written = {"n": 0}

    def write(self, b):
        written["n"] += len(b)
        if written["n"] > after:
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real(self, b)

    monkeypatch.setattr(files._Recording, "write", write)


def test_a_full_disk_is_one_error_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import torch

    from asl.checkpoint import save_checkpoint

    _full_disk(monkeypatch, after=100)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "a.txt", "x" * 1000)
    with pytest.raises(OutputError, match="cannot write .*last.pth: No space left on device"):
        save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "last.pth")  # torch wraps it in RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_error_line(tmp_path, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match="Read-only file system"):
        atomic_write(tmp_path / "a.txt", "x")
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    from asl.data.demo import generate_demo

    with pytest.raises(OutputError, match="cannot write .*demo: Read-only file system"):
        generate_demo(tmp_path / "demo", num_train=2, num_val=2)


def test_stale_temporaries_of_a_killed_write_are_removed_in_the_runs_folder_only(tmp_path):
    (tmp_path / ".last.pth.k2j3.tmp").write_text("half")
    (tmp_path / ".best.pth.zz.tmp").write_text("half")
    (tmp_path / ".photo.jpg.x.tmp").write_text("not ours")
    (tmp_path / "notes.tmp").write_text("not ours")
    removed = remove_stale_temporaries(tmp_path, ("last.pth", "best.pth"))
    assert sorted(p.name for p in removed) == [".best.pth.zz.tmp", ".last.pth.k2j3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".photo.jpg.x.tmp", "notes.tmp"]


def test_a_resumed_run_removes_what_a_killed_save_left(trained_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained_run["out"], out)
    (out / ".last.pth.dead01.tmp").write_bytes(b"half a checkpoint")
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            *TINY[:-4],
            "--epochs",
            "2",
            "--lr",
            "3e-3",
            "--ema-decay",
            "0.9",
            "--seed",
            "1",
            "--workers",
            "0",
            "--resume",
            out / "last.pth",
            "--output",
            out,
        ],
        capsys,
    )
    assert rc == 0, err
    assert not (out / ".last.pth.dead01.tmp").exists()


def test_a_failed_start_leaves_no_empty_folder(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "labels.csv").write_text("image,labels\n")  # no images listed
    rc, _, err = call(
        "train", [tmp_path / "d", "--dataset", "tagged", *TINY, "--output", tmp_path / "new" / "run"], capsys
    )
    one_error(rc, err, "no images listed")
    assert not (tmp_path / "new").exists()
    rc, _, err = call("validate", ["--model-path", tmp_path / "missing.pth", "--output", tmp_path / "val"], capsys)
    one_error(rc, err, "checkpoint not found")
    assert not (tmp_path / "val").exists()


def test_a_second_signal_waits_for_the_file_being_written_then_exits_128_plus_n():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received and stop.name == "SIGTERM"
        with pytest.raises(Interrupted) as info:
            with stop.saving():
                os.kill(os.getpid(), signal.SIGTERM)  # a second one while a checkpoint is written ...
                finished = True  # ... does not cut the write short
        assert finished and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous

    def main(argv):
        raise Interrupted(signal.SIGTERM)

    assert cli.run(main) == 128 + signal.SIGTERM


def test_a_folder_with_an_earlier_best_pth_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    shutil.copy(trained_run["out"] / "best.pth", out / "best.pth")
    before = (out / "best.pth").read_bytes()
    rc, _, err = call("train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", out], capsys)
    one_error(rc, err, "already holds a run (best.pth)")
    assert err[-1].index("choose a new --output") < err[-1].index("--overwrite")
    assert (out / "best.pth").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["best.pth"]


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_unwritable_outputs_fail_before_any_work(where, trained_run, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    out = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "sub", "proc": Path("/proc/asl_run")}[where]
    rc, _, err = call("train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", out], capsys)
    one_error(rc, err, "--output")
    assert err == [err[-1]]
    rc, out_text, err = call("validate", ["--model-path", trained_run["out"] / "best.pth", "--output", out], capsys)
    one_error(rc, err, "--output")
    assert out_text == "" and (tmp_path / "f").read_text() == "mine"


def test_save_image_is_checked_before_tagging(trained_run, tmp_path, capsys):
    best, pic = trained_run["out"] / "best.pth", trained_run["data"] / "img" / "0000.png"
    for dest, fragment in (
        (tmp_path / "x.unknownext", "unknown picture format"),
        (pic, "already exists"),
        (Path("/proc/x.png"), "cannot write"),
    ):
        before = pic.read_bytes()
        rc, out, err = call("infer", ["--model-path", best, "--pic-path", pic, "--save-image", dest], capsys)
        one_error(rc, err, fragment)
        assert out == "" and pic.read_bytes() == before


@pytest.mark.slow
def test_closed_stdout_ends_quietly(trained_run):
    cmd = (
        f"{sys.executable} {REPO / 'infer.py'} --model-path {trained_run['out'] / 'best.pth'} "
        f"--pic-path {trained_run['data'] / 'img'} --th 0 | head -1"
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and "0000.png" in proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- outputs apart from inputs (asl.rundir)


def test_no_output_of_infer_is_one_of_its_inputs_or_lies_among_them(trained_run, tmp_path, capsys):
    pics = tmp_path / "P"
    shutil.copytree(trained_run["data"] / "img", pics)
    before = tree_digest(pics)
    best = trained_run["out"] / "best.pth"
    base = ["--model-path", best, "--pic-path", pics]
    for extra, fragment in (
        (["--tags-out", tmp_path / "T", "--scores-csv", pics / "0000.png"], "--scores-csv"),
        (["--scores-csv", pics / "new.csv"], "is inside the pictures' folder"),
        (["--save-image", pics / "0001.png"], "already exists and is the picture"),
        (["--tags-out", pics], "is the pictures' folder"),
        (["--tags-out", pics / "tags"], "is inside the pictures' folder"),
        (["--scores-csv", best], "is --model-path"),
    ):
        rc, out, err = call("infer", [*base, *extra, "--overwrite"], capsys)
        one_error(rc, err, fragment)
        assert "--overwrite or not" in err[-1] and out == ""
    assert tree_digest(pics) == before and not (tmp_path / "T").exists()
    assert best.read_bytes()[:2] == b"PK"


def test_export_never_writes_over_its_checkpoint(trained_run, tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    shutil.copy(trained_run["out"] / "best.pth", onnx)  # a checkpoint under an .onnx name
    before = onnx.read_bytes()
    rc, _, err = call("export", ["--model-path", onnx, "--output", onnx, "--overwrite"], capsys)
    one_error(rc, err, "is --model-path")
    (tmp_path / "notes.onnx").write_text("mine")
    rc, _, err = call(
        "export",
        ["--model-path", trained_run["out"] / "best.pth", "--output", tmp_path / "notes.onnx", "--overwrite"],
        capsys,
    )
    one_error(rc, err, "is not a file this command wrote")
    assert onnx.read_bytes() == before and (tmp_path / "notes.onnx").read_text() == "mine"


def test_a_symlinked_lock_is_never_followed(trained_run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for command, argv in (
        ("train", [trained_run["data"], "--dataset", "tagged", *TINY]),
        ("validate", ["--model-path", trained_run["out"] / "best.pth"]),
    ):
        out = tmp_path / f"out-{command}"
        out.mkdir()
        (out / ".asl-run.lock").symlink_to(notes)
        rc, _, err = call(command, [*argv, "--output", out], capsys)
        one_error(rc, err, "is a symbolic link")
        assert notes.read_text() == "my notes" and os.path.islink(out / ".asl-run.lock")
    fifo = tmp_path / "fifo-out"
    fifo.mkdir()
    os.mkfifo(fifo / ".asl-run.lock")
    with pytest.raises(ConfigError, match="not a regular file"):
        RunLock(fifo)


def test_a_users_own_config_yaml_is_not_a_run(trained_run, tmp_path, capsys):
    mine = tmp_path / "recipe"
    mine.mkdir()
    (mine / "config.yaml").write_text("epochs: 40\nlr: 2.0e-4\n")
    for extra in ([], ["--overwrite"]):
        rc, _, err = call(
            "train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", mine, *extra], capsys
        )
        one_error(rc, err, "holds files no run wrote (config.yaml)")
    assert (mine / "config.yaml").read_text() == "epochs: 40\nlr: 2.0e-4\n" and len(list(mine.iterdir())) == 1
    # what a run writes, with a run's content, is a run's: a copied best.pth that loads, a metrics.jsonl that parses
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copy(trained_run["out"] / "best.pth", copied / "best.pth")
    shutil.copy(trained_run["out"] / "metrics.jsonl", copied / "metrics.jsonl")
    check_folder(copied, TRAINING, overwrite=True)
    (copied / "metrics.jsonl").write_text("not json\n")
    with pytest.raises(ConfigError, match="holds files no run wrote \\(metrics.jsonl\\) beside a run's \\(best.pth\\)"):
        check_folder(copied, TRAINING, overwrite=True)


def test_overwrite_names_the_files_no_run_wrote(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out)
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError) as info:
        check_folder(out, TRAINING, overwrite=True)
    assert "files no run wrote (notes.txt) beside a run's (best.pth" in str(info.value)


def test_data_named_by_its_label_file_protects_the_whole_folder(tmp_path, capsys):
    from asl.data import convert, inspect

    data = make_tagged(tmp_path / "D", n_train=8, n_val=4)
    before = tree_digest(data)
    labels = data / "labels.csv"
    rc, _, err = call(convert.main, [labels, "--output", data / "conv"], capsys)
    one_error(rc, err, "is inside the dataset folder")
    rc, _, err = call(inspect.main, [labels, "--output", data / "insp"], capsys)
    one_error(rc, err, "is inside the dataset folder")
    pytest.importorskip("tensorboard")
    rc, _, err = call(
        "train", [labels, "--dataset", "tagged", *TINY, "--output", tmp_path / "X", "--log-dir", data / "tb"], capsys
    )
    one_error(rc, err, "--log-dir")
    assert "dataset folder" in err[-1]
    assert tree_digest(data) == before and not (tmp_path / "X").exists()


def test_validate_output_is_apart_from_the_data_and_from_a_training_run(trained_run, tmp_path, capsys):
    data = tmp_path / "D"
    shutil.copytree(trained_run["data"], data)
    before = tree_digest(data)
    best = trained_run["out"] / "best.pth"
    for out in (data, data / "val"):
        rc, _, err = call("validate", [data, "--model-path", best, "--output", out, "--overwrite"], capsys)
        one_error(rc, err, "a run never writes into its data")
    assert tree_digest(data) == before
    # a finished training run's folder is not validate's to write, --overwrite or not
    run = tmp_path / "run"
    shutil.copytree(trained_run["out"], run)
    report = (run / "report.html").read_bytes()
    rc, _, err = call("validate", [data, "--model-path", run / "best.pth", "--output", run, "--overwrite"], capsys)
    one_error(rc, err, "holds a run's files")
    assert (run / "report.html").read_bytes() == report
    # a folder a training run is writing (its lock held) is refused too
    held = tmp_path / "held"
    held.mkdir()
    lock = RunLock(held)
    try:
        rc, _, err = call("validate", [data, "--model-path", best, "--output", held], capsys)
        one_error(rc, err, "another run is writing into")
    finally:
        lock.release()
    # validate's own earlier output is replaced with --overwrite
    mine = tmp_path / "val"
    for extra in ([], ["--overwrite"]):
        rc, _, err = call("validate", [data, "--model-path", best, "--output", mine, "--workers", "0", *extra], capsys)
        assert rc == 0, err
    rc, _, err = call("validate", [data, "--model-path", best, "--output", mine], capsys)
    one_error(rc, err, "already holds a validation")


def test_a_full_output_disk_is_named_as_the_output_not_standard_output(trained_run, tmp_path, capsys, monkeypatch):
    import asl.rundir

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asl.rundir.os, "pwrite", full)
    rc, _, err = call("train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", tmp_path / "o"], capsys)
    one_error(rc, err, f"cannot write {tmp_path / 'o' / '.asl-run.lock'}: No space left on device")
    assert "standard output" not in err[-1] and not (tmp_path / "o").exists()

    def main(argv):  # a write no command named: said as an output's, not as standard output's
        raise OSError(errno.ENOSPC, "No space left on device")

    assert cli.run(main) == 2
    assert "cannot write an output of this command" in capsys.readouterr().err


def test_convert_onto_a_read_only_mount_is_one_error_line(tmp_path, capsys, monkeypatch):
    from asl.data import convert

    data = make_tagged(tmp_path / "D", n_train=8, n_val=4)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "RO")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    rc, _, err = call(convert.main, [data, "--output", tmp_path / "RO" / "out"], capsys)
    one_error(rc, err, "Read-only file system")


def test_terminal_escapes_in_class_names_are_printed_escaped(tmp_path, capsys):
    names = ("cat\x1b[2J", "dog", "sky", "tree")
    data = make_tagged(tmp_path / "d", n_train=16, n_val=8, classes=names)
    rc, out, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    rc, out2, err2 = call(
        "infer", ["--model-path", tmp_path / "o" / "best.pth", "--pic-path", data / "img", "--th", "0"], capsys
    )
    assert rc == 0, err2
    text = out + "\n".join(err) + out2 + "\n".join(err2)
    assert "\x1b" not in text and "cat\\x1b[2J" in text


def test_no_command_writes_into_the_data_or_its_pictures(trained_run, tmp_path, capsys):
    """The README's promises, "pictures are never touched" and "never into the data", tried through
    every command that writes, with the data named by its folder and by its label file, with and
    without --overwrite."""
    from asl.data import convert, inspect

    data = tmp_path / "D"
    shutil.copytree(trained_run["data"], data)
    shutil.copy(trained_run["out"] / "best.pth", data / "model.pth")  # a model kept beside the data
    before = tree_digest(data)
    best, pics = trained_run["out"] / "best.pth", data / "img"
    attempts = []
    for root in (data, data / "labels.csv"):
        attempts += [
            ("train", [root, "--dataset", "tagged", *TINY, "--output", data / "run"]),
            ("validate", [root, "--model-path", best, "--output", data / "val"]),
            ("validate", [root, "--model-path", data / "model.pth", "--calibrate"]),
            (inspect.main, [root, "--output", data / "insp"]),
            (convert.main, [root, "--output", data / "conv"]),
        ]
    attempts += [
        ("infer", ["--model-path", best, "--pic-path", pics, "--tags-out", pics / "t"]),
        ("infer", ["--model-path", best, "--pic-path", pics, "--scores-csv", pics / "s.csv"]),
        ("infer", ["--model-path", best, "--pic-path", pics / "0000.png", "--save-image", pics / "0000.png"]),
        ("export", ["--model-path", data / "model.pth", "--output", data / "model.pth"]),
    ]
    for command, argv in attempts:
        for extra in ([], ["--overwrite"]):
            rc, _, err = call(command, [*argv, *extra], capsys)
            assert rc == 2 and err[-1].startswith("error: "), (command, argv, err)
            assert tree_digest(data) == before, (command, argv)
