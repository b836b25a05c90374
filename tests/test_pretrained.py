"""asl.pretrained: timm's pretrained weights through the Hugging Face Hub cache, offline, with a
cache each test lays out itself (models--timm--<tag>/snapshots/<hash>/model.safetensors)."""

from __future__ import annotations

import pytest
import torch

from asl.config import DEMO_CONFIG, load_config
from asl.errors import ConfigError
from asl.models import create_model
from asl.pretrained import resolve_pretrained
from tests.conftest import make_tagged
from tests.helpers import COMMIT, TAG, call, lay_out_cache, one_error


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same_backbone(model, state):
    own = model.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert body and all(torch.equal(own[k], state[k]) for k in body)  # bit for bit
    assert own["fc.weight"].shape[0] != state["fc.weight"].shape[0]  # the head was replaced


def test_a_cached_tag_resolves_offline_and_loads_bit_for_bit(hub):
    state = lay_out_cache(hub)
    src = resolve_pretrained(TAG)
    assert src.tag == TAG and src.repo == f"timm/{TAG}" and src.file.name == "model.safetensors"
    _same_backbone(create_model(TAG, 80, pretrained_file=str(src.file)), state)


def test_hf_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    lay_out_cache(tmp_path / "hf" / "hub")
    assert str(resolve_pretrained(TAG).file).startswith(str(tmp_path / "hf" / "hub"))


def test_training_on_the_demo_starts_from_exactly_the_cached_weights(hub, tmp_path, monkeypatch):
    import asl.trainer as trainer
    from asl.data import demo

    state = lay_out_cache(hub)
    monkeypatch.setattr(demo, "DEFAULTS", dict(demo.DEFAULTS, num_train=8, num_val=4, image_size=32))
    seen = {}

    class Started(Exception):
        pass

    def first_epoch(net, *a, **k):
        seen["state"] = {k: v.clone() for k, v in net.state_dict().items()}
        raise Started

    monkeypatch.setattr(trainer, "train_one_epoch", first_epoch)
    cfg = load_config(
        str(DEMO_CONFIG),
        {
            "data_root": str(tmp_path / "demo"),
            "model_name": TAG,
            "pretrained": True,
            "image_size": 32,
            "epochs": 1,
            "workers": 0,
            "output": str(tmp_path / "o"),
        },
    )
    with pytest.raises(Started):
        trainer.fit(cfg)  # the demo is generated (at the tiny size above), then training starts
    model = create_model(TAG, 80)
    model.load_state_dict(seen["state"])
    _same_backbone(model, state)


def test_the_command_line_with_a_laid_out_cache(hub, tmp_path, capsys, monkeypatch):
    from asl.data import demo

    lay_out_cache(hub)
    monkeypatch.setattr(demo, "DEFAULTS", dict(demo.DEFAULTS, num_train=8, num_val=4, image_size=32))
    rc, out, err = call(
        "train",
        [
            tmp_path / "demo",
            "--model-name",
            TAG,
            "--pretrained",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--dry-run",
            "--output",
            tmp_path / "o",
        ],
        capsys,
    )
    assert rc == 0, err
    assert f"start: timm {TAG} (hf-hub:timm/{TAG}" in out and "train 8 images, val 4" in out
    assert "dry run: nothing trained or written" in out and not (tmp_path / "o").exists()


def test_offline_without_the_weights_is_one_error_line_before_any_data_is_read(hub, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    rc, _, err = call(
        "train", [data, "--dataset", "tagged", "--model-name", TAG, "--pretrained", "--output", tmp_path / "o"], capsys
    )
    one_error(rc, err, f"--pretrained {TAG}: its weights (hf-hub:timm/{TAG}) are not in {hub}")
    assert "--pretrained-path FILE" in err[-1] and "run once with network" in err[-1]
    assert err == [err[-1]] and not (tmp_path / "o").exists()  # nothing logged, nothing written


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--model-name", "resnet50.nope", "--pretrained"], "resnet50.nope names no pretrained weights timm knows"),
        (
            ["--model-name", "botnet50ts_256", "--image-size", "256", "--pretrained"],
            "timm has no pretrained weights for botnet50ts_256",
        ),
    ],
    ids=["unknown-tag", "no-weights"],
)
def test_tags_timm_does_not_have(argv, fragment, hub, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    rc, _, err = call("train", [data, "--dataset", "tagged", *argv, "--output", tmp_path / "o"], capsys)
    one_error(rc, err, fragment)
    assert err == [err[-1]]


def test_a_tag_and_a_file_cannot_both_be_the_start(hub, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    (tmp_path / "w.pth").write_bytes(b"x")
    rc, _, err = call(
        "train",
        [
            data,
            "--dataset",
            "tagged",
            "--model-name",
            TAG,
            "--pretrained",
            "--pretrained-path",
            tmp_path / "w.pth",
            "--output",
            tmp_path / "o",
        ],
        capsys,
    )
    one_error(rc, err, "both name a start")


def test_pretrained_path_files_of_each_kind(hub, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    data = make_tagged(tmp_path / "d", n_train=16, n_val=8)
    common = [
        data,
        "--dataset",
        "tagged",
        "--model-name",
        "resnet10t",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--workers",
        "0",
    ]
    torch.manual_seed(1)
    state = timm.create_model("resnet10t", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.bin")
    torch.save({"state_dict": state}, tmp_path / "w_official.pth")
    for i, f in enumerate(("w.safetensors", "w.bin", "w_official.pth")):
        rc, _, err = call("train", [*common, "--pretrained-path", tmp_path / f, "--output", tmp_path / f"o{i}"], capsys)
        assert rc == 0, err  # the fine-tuning base's --pretrained steps aside for the file
        assert "head not loaded (fc.bias, fc.weight)" in "\n".join(err)
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "other.pth")
    rc, _, err = call(
        "train", [*common, "--pretrained-path", tmp_path / "other.pth", "--output", tmp_path / "x"], capsys
    )
    one_error(rc, err, "does not fit model")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.bin").read_bytes()[:5000])
    rc, _, err = call("train", [*common, "--pretrained-path", tmp_path / "cut.pth", "--output", tmp_path / "y"], capsys)
    one_error(rc, err, "not a readable PyTorch checkpoint")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_every_recipe_config_names_a_pretrained_start_timm_lists():
    import timm

    from tests.conftest import REPO

    listed = set(timm.list_pretrained())
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name in ("demo.yaml", "study_demo.yaml", "demo_single_label.yaml", "study_single_label.yaml"):
            continue  # the demo trains from scratch, offline
        cfg = load_config(str(path))
        assert cfg.pretrained and cfg.model_name in listed, path.name


def test_the_demo_trains_from_scratch():
    from asl.config import DEMO_CONFIG

    assert not load_config(str(DEMO_CONFIG)).pretrained


def test_resolving_an_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm model 'nope_net'"):
        resolve_pretrained("nope_net")


@pytest.mark.parametrize("damage", ["random", "truncated", "huge_header"])
def test_a_damaged_cached_file_is_one_line_saying_how_to_clear_it(damage, hub, tmp_path, capsys):
    import os
    import struct

    lay_out_cache(hub)
    cached = hub / f"models--timm--{TAG}" / "snapshots" / COMMIT / "model.safetensors"
    whole = cached.read_bytes()
    cached.write_bytes(
        {
            "random": os.urandom(4096),
            "truncated": whole[: len(whole) // 2],  # what an interrupted download leaves
            "huge_header": struct.pack("<Q", 2**60) + b'{"a":' + b"0" * 64,
        }[damage]
    )
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    for extra in ([], ["--dry-run"]):
        rc, _, err = call(
            "train",
            [data, "--dataset", "tagged", "--model-name", TAG, "--pretrained", "--output", tmp_path / "o", *extra],
            capsys,
        )
        one_error(rc, err, f"--pretrained {TAG}: the cached file {cached}")
        assert f"models--timm--{TAG}" in err[-1] and "delete" in err[-1]
        assert not (tmp_path / "o").exists()


def test_without_a_network_pretrained_fails_fast_with_one_line(hub, tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE unset and no network (an endpoint nothing answers): the cache is read at once,
    and the absent weights are one line in seconds, not a minute of retries."""
    import time

    from asl import hub as hubmod

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://10.255.255.1")
    hubmod.hub_reachable.cache_clear()
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    t0 = time.perf_counter()
    argv = [data, "--dataset", "tagged", "--model-name", TAG, "--pretrained", "--output", tmp_path / "o"]
    rc, _, err = call("train", argv, capsys)
    hubmod.hub_reachable.cache_clear()
    assert time.perf_counter() - t0 < 5
    one_error(rc, err, "the Hugging Face Hub could not be reached")
