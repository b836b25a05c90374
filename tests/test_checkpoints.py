"""Official ASL checkpoints: built here from the reference key lists, loaded with no user step."""

from __future__ import annotations

import pytest
import torch

from asl.checkpoint import detect_official_tresnet, load_checkpoint, load_init_checkpoint
from asl.models import create_model
from asl.opening import model_from_checkpoint

from .helpers import key_list, to_timm_key


def official_state_from_timm(model: torch.nn.Module, key_file: str):
    """Our own conversion timm -> official inplace_abn layout, key by key from the reference list.

    InPlaceABN scales by |w| + 1e-5 where BatchNorm scales by w: the official weight is w - 1e-5.
    """
    timm_state = model.state_dict()
    out = {}
    for k, shape in key_list(key_file):
        v = timm_state[to_timm_key(k)].clone()
        assert tuple(v.shape) == shape, k
        if to_timm_key(k).endswith("bn.weight"):
            v = v - 1e-5
        out[k] = v
    assert len(out) == len([k for k in timm_state if not k.endswith("num_batches_tracked")])
    return out


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


def test_official_tresnet_m_loads_with_identical_logits(tmp_path):
    timm_model = _randomize_bn(create_model("tresnet_m", 80))
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
