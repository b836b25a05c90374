"""Shards: written from every format (asl-data shard), streamed back (--dataset shards) with the
folder's pictures, labels and metrics."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from asl.data import create_dataset, dataset_splits
from asl.data.shard import shard_dataset
from asl.data.shards import ShardDataset
from asl.errors import DataError
from tests.conftest import RUN_SETTINGS, make_coco, make_tagged
from tests.helpers import REPO, call, one_error, tree_digest


def _members(folder: Path, split: str):
    """{source name: (picture bytes, label JSON)} of a split's shards, read with tarfile alone."""
    info = json.loads((folder / "_info.json").read_text())
    out = {}
    for name in info["splits"][split]["filenames"]:
        with tarfile.open(folder / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for key in {n.split(".")[0] for n in files}:
            labels = json.loads(files[f"{key}.json"])
            picture = next(v for n, v in files.items() if n.startswith(key + ".") and not n.endswith(".json"))
            out[labels["name"]] = (picture, labels)
    return out


def _rows(labels, c, unlisted):
    row = np.full(c, unlisted, dtype=np.float32)
    row[labels.get("neg", [])] = 0
    row[labels.get("unk", [])] = -1
    row[labels["pos"]] = 1
    return row


@pytest.mark.parametrize("kind", ["tagged", "coco", "openimages"])
def test_shards_hold_the_sources_pictures_and_labels(kind, tmp_path):
    from tests.test_openimages import lay_out

    src = tmp_path / "src"
    if kind == "tagged":
        make_tagged(src, n_train=20, n_val=10)
    elif kind == "coco":
        make_coco(src, "train2014")
        make_coco(src, "val2014")
    else:
        lay_out(src, n_train=12, n_test=6)
    before = tree_digest(src)
    r = shard_dataset(str(src), str(tmp_path / "out"), kind, shard_size=3000)
    assert tree_digest(src) == before  # nothing of the source changed
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["complete"] and info["source_format"] == kind
    parts = dataset_splits(kind, str(src))
    for split, ds in parts.items():
        got = _members(tmp_path / "out", split)
        assert len(got) == len(ds) == r["splits"][split]
        assert r["shards"][split] > 1 or len(ds) < 4  # several tars at 3 kB each
        for i, path in enumerate(ds.paths):
            picture, labels = got[str(Path(path).relative_to(src))]
            assert picture == Path(path).read_bytes()
            np.testing.assert_array_equal(_rows(labels, len(ds.class_names), info["unlisted"]), ds.labels.row(i))
    assert (tmp_path / "out" / "classes.txt").read_text().split("\n")[:-1] == list(parts[next(iter(parts))].class_names)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny tagged set, its shards (small tars), and a run trained on the folder."""
    import train
    from asl import cli

    base = tmp_path_factory.mktemp("sharded")
    data = make_tagged(base / "data", n_train=40, n_val=22)
    shard_dataset(str(data), str(base / "shards"), "tagged", shard_size=6000, seed=3)
    out = base / "run"
    assert cli.run(train.main, [str(data), "--dataset", "tagged", *RUN_SETTINGS, "--output", str(out)]) == 0
    return {"data": data, "shards": base / "shards", "model": out / "best.pth", "base": base}


def test_validate_on_shards_gives_the_folders_metrics_exactly(sharded, tmp_path, capsys):
    common = ["--model-path", sharded["model"], "--workers", "2", "--batch-size", "5"]
    rc, _, err = call("validate", [sharded["data"], "--dataset", "tagged", *common, "--output", tmp_path / "f"], capsys)
    assert rc == 0, err
    rc, _, err = call("validate", [sharded["shards"], "--dataset", "auto", *common, "--output", tmp_path / "s"], capsys)
    assert rc == 0, err
    folder = json.loads((tmp_path / "f" / "metrics.json").read_text())
    shards = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert shards == folder
    for f in ("scores.npy", "targets.npy"):  # row by row, in the folder's order
        np.testing.assert_array_equal(np.load(tmp_path / "s" / f), np.load(tmp_path / "f" / f))
    assert "id='contact-sheet'" in (tmp_path / "s" / "report.html").read_text()
    argv = [sharded["shards"], *common, "--dataset", "shards", "--calibrate", "--output", tmp_path / "c"]
    rc, _, err = call("validate", argv, capsys)
    assert rc == 0, err
    assert (tmp_path / "c" / "calibrated.pth").is_file()


def _keys_seen(ds_factory, world, workers, batch):
    """Every sample id each rank's loader yields in one epoch (the stream's pictures replaced by ids)."""
    seen = []
    for rank in range(world):
        ds = ds_factory(rank, world)
        ds.configure(batch, workers)
        ds.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)
        ids = [int(x) for b, _ in loader for x in b]
        assert len(ids) == len(loader) * batch  # the loader's length is what it yields
        seen.append(ids)
    return seen


@pytest.fixture
def id_stream(monkeypatch):
    """Samples decoded as their id (the loader's workers are forked: they see the patch)."""
    monkeypatch.setattr(ShardDataset, "_decode", lambda self, sid, raw: (sid, np.zeros(1, np.float32)))
    monkeypatch.setattr(ShardDataset, "_as_tensors", lambda self, item: (torch.tensor(item[0]), torch.tensor(item[1])))


def test_two_ranks_by_two_workers_see_every_training_sample_once(sharded, id_stream):
    folder = sharded["shards"]
    n = ShardDataset(str(folder), "train").num_samples
    assert n == 40 and len(json.loads((folder / "_info.json").read_text())["splits"]["train"]["filenames"]) > 4

    def factory(rank, world):
        return ShardDataset(str(folder), "train", train=True, seed=5, shuffle_buffer=7, rank=rank, world_size=world)

    seen = _keys_seen(factory, world=2, workers=2, batch=5)
    assert len(seen[0]) == len(seen[1]) == 20  # equal steps per rank
    assert sorted(seen[0] + seen[1]) == list(range(40))  # every sample exactly once
    assert _keys_seen(factory, 2, 2, 5) == seen  # the same seed, ranks and workers: the same batches
    again = ShardDataset(str(folder), "train", train=True, seed=5, shuffle_buffer=7, rank=0, world_size=2)
    again.set_epoch(2)
    assert list(again._rank_share(2)) != list(factory(0, 2)._rank_share(1))  # another epoch, another order


def test_uneven_counts_pad_training_and_evaluation_keeps_each_sample_once(sharded, id_stream):
    folder = sharded["shards"]
    n = ShardDataset(str(folder), "val").num_samples  # 22 over 3 ranks: 8, 7, 7
    evals = _keys_seen(lambda r, w: ShardDataset(str(folder), "val", rank=r, world_size=w), 3, 2, 4)
    lengths = [len(s) for s in evals]
    assert lengths == [8, 8, 8]  # 8 per rank: the short ranks repeat one, which evaluation drops
    spans = [ShardDataset(str(folder), "val", rank=r, world_size=3).rank_range(r) for r in range(3)]
    real = [s[: hi - lo] for (lo, hi), s in zip(spans, evals)]
    assert sorted(sum(real, [])) == list(range(n))
    assert all(s == sorted(s) for s in real)  # evaluation: each rank's samples in order


def test_a_glob_of_tars_or_the_info_file_name_the_same_split(sharded):
    folder = sharded["shards"]
    by_glob = create_dataset("shards", str(folder / "val-*.tar"), "val")
    by_info = create_dataset("shards", str(folder / "_info.json"), "eval")
    assert by_glob.files == by_info.files == ShardDataset(str(folder), "val").files
    with pytest.raises(DataError, match="names other tars"):
        create_dataset("shards", str(folder / "train-000000.tar"), "val")


def test_a_resumed_epoch_takes_the_steps_left(sharded, id_stream):
    folder = sharded["shards"]
    ds = ShardDataset(str(folder), "train", train=True, seed=2, shuffle_buffer=0)
    ds.configure(5, 0)
    ds.set_epoch(3)
    whole = [int(x) for x, _ in ds]
    ds.set_epoch(3, start=15)
    assert len(ds) == 25
    assert [int(x) for x, _ in ds] == whole[15:]


def test_training_on_shards(sharded, tmp_path, capsys):
    argv = [sharded["shards"], "--dataset", "shards", *RUN_SETTINGS, "--workers", "2", "--output", tmp_path / "run"]
    rc, out, err = call("train", argv, capsys)
    assert rc == 0, err
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(np.isfinite(r["train_loss"]) for r in recs)


def test_a_killed_writer_leaves_whole_shards_and_a_new_folder_works(tmp_path, monkeypatch):
    from asl.data import shard

    src = make_tagged(tmp_path / "src", n_train=20, n_val=6)
    real, calls = shard._fill, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shard, "_fill", dies)
    with pytest.raises(KeyboardInterrupt):
        shard_dataset(str(src), str(tmp_path / "a"), "tagged", shard_size=3000)
    info = json.loads((tmp_path / "a" / "_info.json").read_text())
    assert not info["complete"] and info["splits"]["train"]["filenames"] == ["train-000000.tar", "train-000001.tar"]
    tars = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".tar")
    assert tars == info["splits"]["train"]["filenames"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]
    for name in info["splits"]["train"]["filenames"]:
        with tarfile.open(tmp_path / "a" / name) as tar:
            assert len(tar.getmembers()) == 2 * info["splits"]["train"]["shard_lengths"][int(name[-10:-4])]
    with pytest.raises(DataError, match="were not all written"):
        create_dataset("shards", str(tmp_path / "a"), "train")
    monkeypatch.setattr(shard, "_fill", real)
    assert shard_dataset(str(src), str(tmp_path / "b"), "tagged", shard_size=3000)["splits"] == {"train": 20, "val": 6}


def test_bad_shards_are_one_error_line_or_a_skipped_sample(sharded, tmp_path, capsys, caplog):
    import shutil

    src, good = sharded["data"], sharded["shards"]
    from asl.data.shard import main as shard_main

    rc, _, err = call(shard_main, [src, src / "inside"], capsys)
    one_error(rc, err, "inside")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    rc, _, err = call(shard_main, [src, tmp_path / "full"], capsys)
    one_error(rc, err, "notes.txt")
    from asl.data.convert import main as convert_main
    from asl.data.inspect import main as inspect_main

    for main, argv in (
        (shard_main, [good, tmp_path / "again"]),
        (inspect_main, [good, "--output", tmp_path / "i"]),
        (convert_main, [good, "--output", tmp_path / "c"]),
    ):
        rc, _, err = call(main, argv, capsys)
        one_error(rc, err, "holds shards, which train.py and validate.py stream")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"

    def copy(name):
        shutil.copytree(good, tmp_path / name)
        return tmp_path / name

    wrong = copy("counts")
    info = json.loads((wrong / "_info.json").read_text())
    info["splits"]["val"]["num_samples"] += 1
    (wrong / "_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="counts disagree"):
        create_dataset("shards", str(wrong), "val")
    notar = copy("notar")
    (notar / "val-000000.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a tar"):
        create_dataset("shards", str(notar), "val")
    other = copy("classes")
    (other / "classes.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(DataError, match="not the class list"):
        create_dataset("shards", str(other), "val")
    cut = copy("truncated")
    tar = cut / "val-000000.tar"
    tar.write_bytes(tar.read_bytes()[:1500])
    ds = create_dataset("shards", str(cut), "val")
    ds.configure(4, 0)
    with pytest.raises(DataError, match=r"val-000000.tar: a broken tar at byte \d+"):
        list(ds)
    odd = copy("odd")
    first = odd / "val-000000.tar"
    with tarfile.open(first) as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    with tarfile.open(first, "w") as t:
        for m, data in members:
            if m.name.endswith(".json") and m.name.startswith("000000000"):
                data = json.dumps({"pos": [99]}).encode()  # another class list's index
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    ds = create_dataset("shards", str(odd), "val")
    ds.configure(4, 0)
    items = list(ds)
    assert len(items) == ds.num_samples and ds.bad_count == 1
    assert "class 99 is out of range for 4 classes" in caplog.text


@pytest.mark.slow
def test_torchrun_two_processes_on_shards_equal_one_process_on_the_folder(sharded, tmp_path):
    """Training under torchrun (gloo) evaluates the shards on 2 ranks; best.pth validated on the folder
    in one process gives the same mAP to the last bit."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(port), str(REPO / "train.py"), str(sharded["shards"]), "--dataset", "shards"]
    cmd += [*RUN_SETTINGS, "--workers", "1", "--batch-size", "4", "--output", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = torch.load(out / "best.pth", weights_only=True)
    import validate
    from asl import cli

    argv = [str(sharded["data"]), "--dataset", "tagged", "--model-path", str(out / "best.pth"), "--workers", "0"]
    assert cli.run(validate.main, [*argv, "--output", str(tmp_path / "v")]) == 0
    single = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert single["mAP"] == best["mAP"]
