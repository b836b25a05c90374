"""export.py --format hf: a model folder timm loads with the same logits, and our commands too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import call, one_error


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    import export
    from asl import cli

    out = tmp_path_factory.mktemp("hf") / "tagger"
    assert (
        cli.run(
            export.main, ["--model-path", str(trained_run["out"] / "best.pth"), "--format", "hf", "--output", str(out)]
        )
        == 0
    )
    return out


def test_timm_alone_builds_the_same_network_with_our_class_names(exported, trained_run):
    import timm

    from asl.opening import open_model

    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    ours = open_model(str(trained_run["out"] / "best.pth"), device="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours.net(x), atol=1e-5, rtol=0)
    assert list(model.pretrained_cfg["label_names"]) == ours.class_names
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    config = json.loads((exported / "config.json").read_text())
    assert config["asl"]["task"] == "multi_label" and config["asl"]["timm_loads"]
    card = (exported / "README.md").read_text()
    assert "library_name: timm" in card and "| mAP |" in card and "local-dir:PATH" in card
    assert "Per-class AP (validation, epoch 1): best" in card  # from the run's per_class_ap.json


def test_our_commands_take_the_folder_and_score_the_same(exported, trained_run, tmp_path, capsys):
    pic = sorted((trained_run["data"] / "img").glob("*.png"))[0]
    outs = []
    for model in (trained_run["out"] / "best.pth", f"local-dir:{exported}", exported):
        rc, out, err = call("infer", ["--model-path", model, "--pic-path", pic, "--th", "0", "--json"], capsys)
        assert rc == 0, err
        outs.append(json.loads(out)[0]["labels"])
    assert outs[0] == outs[1] == outs[2]
    metrics = []
    for name, model in (("pth", trained_run["out"] / "best.pth"), ("hf", f"local-dir:{exported}")):
        rc, _, err = call("validate", ["--model-path", model, "--workers", "0", "--output", tmp_path / name], capsys)
        assert rc == 0, err
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert metrics[0]["mAP"] == metrics[1]["mAP"]
    np.testing.assert_array_equal(np.load(tmp_path / "pth" / "scores.npy"), np.load(tmp_path / "hf" / "scores.npy"))
    pytest.importorskip("onnxruntime")
    rc, _, err = call("export", ["--model-path", f"local-dir:{exported}", "--output", tmp_path / "m.onnx"], capsys)
    assert rc == 0, err  # export.py checks the ONNX graph against the folder's PyTorch model
    argv = ["--model-path", tmp_path / "m.onnx", "--pic-path", pic, "--th", "0", "--json"]
    rc, out, err = call("infer", argv, capsys)
    assert rc == 0, err
    onnx_labels = json.loads(out)[0]["labels"]
    assert [x["label"] for x in onnx_labels] == [x["label"] for x in outs[0]]


def test_an_ml_decoder_folder_says_timm_cannot_build_it_and_loads_with_us(tmp_path, capsys):
    from asl.checkpoint import make_checkpoint, save_checkpoint
    from asl.models import create_model

    model = create_model("test_resnet", 4, head="ml_decoder")
    names = ["a", "b", "c", "d"]
    ckpt = make_checkpoint(
        model,
        model_name="test_resnet",
        class_names=names,
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        head="ml_decoder",
    )
    save_checkpoint(ckpt, tmp_path / "m.pth")
    rc, _, err = call(
        "export", ["--model-path", tmp_path / "m.pth", "--format", "hf", "--output", tmp_path / "hf"], capsys
    )
    assert rc == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["asl"]["timm_loads"] is False and config["asl"]["head"] == "ml_decoder"
    assert "timm cannot build this model's ml_decoder head" in (tmp_path / "hf" / "README.md").read_text()
    from asl.opening import open_model

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(open_model(str(tmp_path / "hf"), device="cpu").net(x), model.eval()(x))


def test_bad_hf_input_is_one_error_line(exported, trained_run, tmp_path, capsys):
    import shutil

    model = trained_run["out"] / "best.pth"
    (tmp_path / "m.onnx").write_bytes(b"not really")
    rc, _, err = call(
        "export", ["--model-path", tmp_path / "m.onnx", "--format", "hf", "--output", tmp_path / "x"], capsys
    )
    one_error(rc, err, "--format hf exports a PyTorch checkpoint")
    assert not (tmp_path / "x").exists()
    rc, _, err = call("export", ["--model-path", model, "--format", "hf", "--output", exported], capsys)
    one_error(rc, err, "already holds a Hugging Face model folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    rc, _, err = call("export", ["--model-path", model, "--format", "hf", "--output", tmp_path / "mine"], capsys)
    one_error(rc, err, "notes.txt")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    pic = sorted((trained_run["data"] / "img").glob("*.png"))[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = call("infer", ["--model-path", f"local-dir:{empty}", "--pic-path", pic], capsys)
    one_error(rc, err, "not a model folder (no config.json")
    noweights = tmp_path / "noweights"
    shutil.copytree(exported, noweights)
    (noweights / "model.safetensors").unlink()
    rc, _, err = call("infer", ["--model-path", noweights, "--pic-path", pic], capsys)
    one_error(rc, err, "no model.safetensors")
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_classes"] = 7
    (other / "config.json").write_text(json.dumps(cfg))
    rc, _, err = call("infer", ["--model-path", other, "--pic-path", pic], capsys)
    one_error(rc, err, "does not fit")


def _cache_with(exported, root, repo="someone/tagger"):
    """What huggingface_hub leaves after one snapshot download of ``repo``: the files under
    snapshots/<commit>/ and refs/main naming the commit."""
    import shutil

    from tests.helpers import COMMIT

    org, name = repo.split("/")
    snap = root / f"models--{org}--{name}" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "README.md"):
        shutil.copy(exported / f, snap / f)
    (root / f"models--{org}--{name}" / "refs").mkdir()
    (root / f"models--{org}--{name}" / "refs" / "main").write_text(COMMIT)


def test_hub_ids_resolve_from_the_cache_and_fail_fast_when_not_there(
    exported, trained_run, tmp_path, capsys, monkeypatch
):
    import time

    from asl import hub

    cache = tmp_path / "hub"
    _cache_with(exported, cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    pic = sorted((trained_run["data"] / "img").glob("*.png"))[0]
    got = []
    for model in ("hf-hub:someone/tagger", trained_run["out"] / "best.pth"):
        rc, out, err = call("infer", ["--model-path", model, "--pic-path", pic, "--th", "0", "--json"], capsys)
        assert rc == 0, err
        got.append(json.loads(out)[0]["labels"])
    assert got[0] == got[1]
    rc, _, err = call("infer", ["--model-path", "hf-hub:not a repo", "--pic-path", pic], capsys)
    one_error(rc, err, "not a Hub model id")
    # offline, and with no network at all (an endpoint nothing answers): one line, at once
    for env, endpoint in (("1", None), ("0", "http://10.255.255.1")):
        monkeypatch.setenv("HF_HUB_OFFLINE", env)
        if endpoint:
            monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
        hub.hub_reachable.cache_clear()
        t0 = time.perf_counter()
        rc, _, err = call("infer", ["--model-path", "hf-hub:someone/absent", "--pic-path", pic], capsys)
        assert time.perf_counter() - t0 < 5
        one_error(rc, err, "is not in the Hugging Face cache and")
    hub.hub_reachable.cache_clear()


def test_push_to_hub_uploads_the_folder_export_wrote(trained_run, tmp_path, capsys, monkeypatch):
    """No upload can run here: the Hub's two calls are recorded instead, with what they were given."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo, **k: calls.append(("create", repo, k)) or "URL")
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: calls.append(("upload", k)))
    model = trained_run["out"] / "best.pth"
    argv = ["--model-path", model, "--format", "hf", "--output", tmp_path / "out", "--push-to-hub", "me/tagger"]
    rc, out, err = call("export", argv, capsys)
    assert rc == 0, err
    assert calls[0] == ("create", "me/tagger", {"private": True, "exist_ok": True})
    up = calls[1][1]
    assert up["repo_id"] == "me/tagger" and up["folder_path"] == str(tmp_path / "out")
    assert sorted(up["allow_patterns"]) == sorted(
        p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")
    )
    calls.clear()
    rc, _, err = call("export", [*argv[:-1], "bad id", "--overwrite"], capsys)
    one_error(rc, err, "not a Hub repository id")
    rc, _, err = call("export", ["--model-path", model, "--push-to-hub", "me/tagger"], capsys)
    one_error(rc, err, "add --format hf")
    assert calls == []


def test_training_starts_from_a_model_folder(exported, trained_run, tmp_path, capsys):
    argv = [trained_run["data"], "--dataset", "tagged", "--pretrained-path", f"local-dir:{exported}", "--no-pretrained"]
    argv += ["--model-name", "test_resnet", "--image-size", "32", "--epochs", "1", "--workers", "0"]
    rc, out, err = call("train", [*argv, "--output", tmp_path / "run", "--dry-run"], capsys)
    assert rc == 0, err
    assert f"start: weights file {exported / 'model.safetensors'}" in out + "\n".join(err)


def test_train_push_to_hub_exports_best_pth_and_uploads_it(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from tests.conftest import make_tagged

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo, **k: calls.append(repo) or "URL")
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: calls.append(k["folder_path"]))
    data = make_tagged(tmp_path / "data", n_train=16, n_val=8)
    argv = [data, "--dataset", "tagged", "--no-pretrained", "--model-name", "test_resnet", "--image-size", "32"]
    argv += ["--epochs", "1", "--workers", "0", "--output", tmp_path / "run", "--push-to-hub", "me/run"]
    rc, _, err = call("train", argv, capsys)
    assert rc == 0, err
    assert calls == ["me/run", str(tmp_path / "run" / "hf")]
    assert (tmp_path / "run" / "hf" / "model.safetensors").is_file()
    from asl.outputs import TRAINING
    from asl.rundir import check_folder

    check_folder(tmp_path / "run", TRAINING, overwrite=True, resume=None, flag="--output")  # still a run's folder
