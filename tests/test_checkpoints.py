"""asl.checkpoint: the official layouts loaded with identical logits, odd values inside a checkpoint,
files of another kind named .pth, calibrated copies of plain state dicts, stored configs with bad values."""

from __future__ import annotations

import json

import pytest
import torch

from asl.checkpoint import detect_official_tresnet, load_checkpoint, load_init_checkpoint
from asl.models import create_model
from asl.opening import model_from_checkpoint
from tests.helpers import call, official_state_from_timm, one_error, randomize_bn, validation_metrics

from .helpers import key_list, to_timm_key


def test_official_tresnet_m_loads_with_identical_logits(tmp_path):
    timm_model = randomize_bn(create_model("tresnet_m", 80))
    names = {i: f"class{i}" for i in range(80)}
    torch.save(
        {
            "model": official_state_from_timm(timm_model, "official_asl_tresnet_m_keys.tsv"),
            "num_classes": 80,
            "idx_to_class": names,
        },
        tmp_path / "MS_COCO_TRresNet_M_224_81.8.pth",
    )
    ckpt = load_checkpoint(tmp_path / "MS_COCO_TRresNet_M_224_81.8.pth")
    model, info = model_from_checkpoint(ckpt)  # no --model-name: detected from the weights
    assert info["model_name"] == "tresnet_m" and info["image_size"] == 224 and info["num_classes"] == 80
    assert info["mean"] == (0.0, 0.0, 0.0) and info["std"] == (1.0, 1.0, 1.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), timm_model(x), rtol=1e-5, atol=1e-5)
    # and as an init checkpoint for fine-tuning on 5 classes: the head is dropped, the body kept
    fresh = create_model("tresnet_m", 5)
    report = load_init_checkpoint(fresh, str(tmp_path / "MS_COCO_TRresNet_M_224_81.8.pth"))
    assert set(report["dropped"]) == {"head.fc.weight", "head.fc.bias"}
    key = "body.conv1.bn.weight"
    torch.testing.assert_close(fresh.state_dict()[key], timm_model.state_dict()[key])


@pytest.mark.parametrize(
    "variant,key_file",
    [("tresnet_l", "official_asl_tresnet_l_keys.tsv"), ("tresnet_xl", "official_asl_tresnet_xl_keys.tsv")],
)
def test_official_layouts_are_detected(variant, key_file):
    keys = key_list(key_file)
    state = {k: torch.empty(shape) for k, shape in keys}
    assert detect_official_tresnet(state) == (variant, 80, "linear")
    timm_keys = {
        k: tuple(v.shape)
        for k, v in create_model(variant, 80).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert {to_timm_key(k): s for k, s in keys} == timm_keys  # every key and shape has its twin


def test_open_images_bottleneck_head(tmp_path):
    head = dict(key_list("official_asl_tresnet_l_openimages_bottleneck_head_keys.tsv"))
    assert head["head.fc.embedding_generator.0.weight"] == (512, 2432)
    model = create_model("tresnet_l", 9605, head="bottleneck")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in head.items():
        assert own[k] == shape
    state = {k: torch.empty(s) for k, s in key_list("official_asl_tresnet_l_keys.tsv") if not k.startswith("head")}
    state.update({k: torch.zeros(s) for k, s in head.items()})
    assert detect_official_tresnet(state) == ("tresnet_l", 9605, "bottleneck")
    x = torch.rand(1, 2432)
    assert model.head.fc(x).shape == (1, 9605)


def test_wrong_model_name_names_the_mismatch(tmp_path):
    timm_model = create_model("tresnet_m", 3)
    state = {k: v for k, v in timm_model.state_dict().items()}
    torch.save({"model": state, "num_classes": 3, "idx_to_class": {0: "a", 1: "b", 2: "c"}}, tmp_path / "m.pth")
    from asl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit tresnet_l"):
        model_from_checkpoint(load_checkpoint(tmp_path / "m.pth"), "tresnet_l")


# --------------------------------------------------------------------------- odd values, files of another kind


ODD = [
    ({"num_classes": True}, "'num_classes' must be a whole number"),
    ({"num_classes": 10**8}, "'num_classes' must be a whole number in [1, 100000]"),
    ({"image_size": "64"}, "'image_size' must be a whole number"),
    ({"thresholds": [0.5, 0.5]}, "'thresholds' must hold one value per class (4)"),
    ({"model_name": 5}, "'model_name' must be a timm model name"),
    ({"mean": "abc"}, "'mean' must be a list of 3 numbers"),
    ({"std": [0.0, 1.0, 1.0]}, "'std' holds a 0"),
    ({"idx_to_class": {"a": "cat", "1": "dog", "2": "sky", "3": "tree"}}, "'idx_to_class' key 'a'"),
]


@pytest.mark.parametrize("change,fragment", ODD, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(ODD)])
def test_odd_values_inside_a_checkpoint_are_one_error_line(change, fragment, trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    torch.save(dict(ckpt, **change), tmp_path / "odd.pth")
    pic = trained_run["data"] / "img" / "0000.png"
    for script, argv in (("infer", ["--pic-path", pic]), ("export", ["--output", tmp_path / "x.onnx"])):
        rc, _, err = call(script, ["--model-path", tmp_path / "odd.pth", *argv], capsys)
        one_error(rc, err, fragment)
    assert not (tmp_path / "x.onnx").exists()


def test_a_bad_value_in_a_stored_config_says_it_came_from_the_checkpoint(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    torch.save(dict(ckpt, config=dict(ckpt["config"], lr="fast")), tmp_path / "c.pth")
    rc, _, err = call("validate", [trained_run["data"], "--model-path", tmp_path / "c.pth"], capsys)
    one_error(rc, err, "checkpoint config: config key 'lr' expects float, got 'fast'")


def test_an_onnx_or_safetensors_file_named_pth_is_told_for_what_it_is(trained_run, tmp_path, capsys):
    from safetensors.torch import save_file

    from asl.checkpoint import load_checkpoint

    onnx_file = tmp_path / "model.onnx"
    rc, _, err = call("export", ["--model-path", trained_run["out"] / "best.pth", "--output", onnx_file], capsys)
    assert rc == 0, err
    (tmp_path / "model.pth").write_bytes(onnx_file.read_bytes())
    rc, _, err = call(
        "infer",
        ["--model-path", tmp_path / "model.pth", "--pic-path", trained_run["data"] / "img" / "0000.png"],
        capsys,
    )
    one_error(rc, err, "is an ONNX model")
    assert "unsafe" not in err[-1] and "name it .onnx" in err[-1]
    state = torch.load(trained_run["out"] / "best.pth", weights_only=True)["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.pth")  # safetensors, misnamed
    loaded = load_checkpoint(tmp_path / "weights.pth")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--init-checkpoint",
            tmp_path / "weights.pth",
            "--output",
            tmp_path / "run",
        ],
        capsys,
    )
    assert rc == 0, err


def test_calibrating_a_plain_state_dict_writes_a_checkpoint_every_command_loads(trained_run, tmp_path, capsys):
    state = torch.load(trained_run["out"] / "best.pth", weights_only=True)["model"]
    torch.save(state, tmp_path / "plain.pth")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\nsky\ntree\n")
    common = [
        trained_run["data"],
        "--dataset",
        "tagged",
        "--model-path",
        tmp_path / "plain.pth",
        "--model-name",
        "test_resnet",
        "--class-names",
        names,
        "--workers",
        "0",
    ]
    rc, _, err = call("validate", common, capsys)
    assert rc == 0 and any("names no input size: validating at 224 px" in ln for ln in err), err  # said, not silent
    rc, _, err = call(
        "validate",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            "--model-path",
            tmp_path / "plain.pth",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--class-names",
            names,
            "--calibrate",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert rc == 0, err
    cal = tmp_path / "plain.calibrated.pth"
    ckpt = torch.load(cal, weights_only=True)
    assert ckpt["model_name"] == "test_resnet" and ckpt["image_size"] == 32 and len(ckpt["thresholds"]) == 4
    assert [ckpt["idx_to_class"][i] for i in range(4)] == ["cat", "dog", "sky", "tree"]
    rc, out, err = call(
        "infer", ["--model-path", cal, "--pic-path", trained_run["data"] / "img" / "0000.png", "--json"], capsys
    )
    assert rc == 0, err
    rc, _, err = call(
        "validate", [trained_run["data"], "--dataset", "tagged", "--model-path", cal, "--workers", "0"], capsys
    )
    assert rc == 0, err


def test_plain_timm_state_dict_validates_and_infers(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    plain = tmp_path / "plain.pth"
    torch.save(load_checkpoint(best)["model"], plain)  # what `torch.save(model.state_dict())` writes
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nsky\ntree\n")
    true = validation_metrics([trained_run["data"], "--model-path", best], tmp_path, capsys, "a")
    common = ["--model-name", "test_resnet", "--dataset", "tagged", "--image-size", "32"]
    m = validation_metrics(
        [trained_run["data"], "--model-path", plain, *common, "--class-names", names], tmp_path, capsys, "b"
    )
    assert m["mAP"] == pytest.approx(true["mAP"], abs=1e-9)
    plain_infer = [
        "--model-path",
        plain,
        "--model-name",
        "test_resnet",
        "--pic-path",
        trained_run["data"] / "img" / "0000.png",
    ]
    scored = [*plain_infer, "--image-size", "32", "--th", "0", "--json"]
    rc, out, err = call("infer", [*scored, "--class-names", names], capsys)
    assert rc == 0, err
    assert {lab["label"] for lab in json.loads(out)[0]["labels"]} == {"cat", "dog", "sky", "tree"}
    rc, out, err = call("infer", scored, capsys)
    assert rc == 0 and {lab["label"] for lab in json.loads(out)[0]["labels"]} == {f"class_{k}" for k in range(4)}
    names.write_text("cat\ndog\nsky\n")
    rc, _, err = call("infer", [*plain_infer, "--class-names", names], capsys)
    one_error(rc, err, "lists 3 names, the model has 4 classes")
