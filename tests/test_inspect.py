"""asl.data.inspect: the summary of a dataset before training, its chart and its suggestion."""

from __future__ import annotations

import json
import shutil

import pytest

from asl import cli
from asl.data import demo
from asl.data.inspect import inspect_dataset, main, suggest_loss
from tests.conftest import make_tagged
from tests.helpers import call, one_error, tree_digest


def test_inspect_the_demo_prints_a_summary_and_writes_its_chart(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEFAULTS", dict(demo.DEFAULTS, num_train=12, num_val=6, image_size=16))
    root = demo.ensure_demo(tmp_path / "demo", num_classes=20)
    before = tree_digest(root)
    rc, out, err = call(main, [root, "--output", tmp_path / "insp"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{root}: demo (demo.json); 18 images in train 12, val 6")
    assert "missing 0, unreadable 0" in out and "20 classes; rarest:" in out
    assert "labels per image: mean" in out and "suggested start: --gamma-neg" in out
    assert len(lines) <= 8  # a few lines a person reads
    png = (tmp_path / "insp" / "positives.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "insp" / "summary.json").read_text())
    assert summary["images"] == 18 and len(summary["positives"]) == 20 and sum(summary["positives"]) > 0
    assert tree_digest(root) == before
    rc, _, err = call(main, [root, "--output", tmp_path / "insp"], capsys)
    one_error(rc, err, "already holds an inspection")
    rc, _, err = call(main, [root, "--output", root / "x"], capsys)
    one_error(rc, err, "inside the dataset")


def test_leaks_duplicates_missing_and_unreadable_pictures_are_reported(tmp_path):
    root = make_tagged(tmp_path / "d", 6, 4)
    shutil.copy(root / "img" / "0000.png", root / "img" / "0007.png")  # same bytes: a duplicate
    (root / "img" / "0001.png").unlink()  # missing
    (root / "img" / "0002.png").write_bytes(b"not a picture")  # unreadable
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text + "img/0009.png,cat,train\n")  # 0009 is also in val: a leak
    r = inspect_dataset(str(root))
    assert r.dataset == "tagged" and [p.split("/")[-1] for p in r.missing] == ["0001.png"]
    assert [p.split("/")[-1] for p in r.unreadable] == ["0002.png"]
    assert [p.split("/")[-1] for p in r.in_two_splits] == ["0009.png"]
    assert [[p.split("/")[-1] for p in g] for g in r.duplicates] == [["0000.png", "0007.png"]]


@pytest.mark.parametrize("fraction,gamma_neg", [(0.036, 4), (0.2, 2), (0.5, 1)])
def test_the_suggestion_follows_label_density(fraction, gamma_neg):
    s = suggest_loss(fraction, rare=0, num_classes=10)
    assert s["gamma_neg"] == gamma_neg and f"{100 * fraction:.1f}% positive" in s["reason"]
    assert s["flags"].startswith(f"--gamma-neg {gamma_neg} ")
    assert "fewer than 5 positives" in suggest_loss(fraction, rare=3, num_classes=10)["reason"]


def test_the_asl_data_console_dispatches_and_refuses_an_unknown_command(tmp_path, monkeypatch, capsys):
    root = make_tagged(tmp_path / "d", 4, 2)
    monkeypatch.setattr("sys.argv", ["asl-data", "inspect", str(root), "--output", str(tmp_path / "i")])
    with pytest.raises(SystemExit) as done:
        cli.data_console()
    assert done.value.code == 0 and (tmp_path / "i" / "positives.png").is_file()
    monkeypatch.setattr("sys.argv", ["asl-data", "look", str(root)])
    with pytest.raises(SystemExit) as done:
        cli.data_console()
    assert done.value.code == 2 and "usage: asl-data {inspect,convert,shard}" in capsys.readouterr().err
