"""asl.heads.MLDecoder: the official head's eval formula (float64 against a restatement of the
official operations), the group mapping, torch.compile, autocast; the official checkpoints built
from the reference key lists (both head layouts, with and without num_batches_tracked) through
infer.py with the official flags; training, export and bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from asl.checkpoint import detect_official_tresnet, load_checkpoint, normalize_state_dict
from asl.errors import CheckpointError, ConfigError
from asl.heads import MLDecoder, ml_decoder_groups
from asl.models import create_model
from asl.opening import model_from_checkpoint
from tests.conftest import REPO, make_tagged
from tests.helpers import TINY, call, key_list, one_error, to_timm_key

OLD_LAYOUT = {  # the older official layout (and timm's copy): four entries on the head itself
    "head.decoder.embed_standart.": "head.embed_standart.",
    "head.decoder.query_embed.": "head.query_embed.",
    "head.decoder.duplicate_pooling": "head.duplicate_pooling",
}


# --------------------------------------------------------------------------- the formula


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def official_head(features: torch.Tensor, sd: dict, num_classes: int, heads: int = 8) -> torch.Tensor:
    """The official head's eval operations, restated with plain tensor algebra (no nn modules):
    tokens, ReLU(projection), the query doubled before norm1, cross-attention (8 heads, packed
    q/k/v), post-norm FFN, then class c from query c // K, column c % K, plus its bias."""
    p = "head.decoder."
    lay = p + "layers.0."
    tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features
    mem = torch.relu(tokens @ sd[p + "embed_standart.weight"].T + sd[p + "embed_standart.bias"])  # (B, T, D)
    q = sd[p + "query_embed.weight"]  # (G, D)
    g, d = q.shape
    t = _layer_norm(2 * q, sd[lay + "norm1.weight"], sd[lay + "norm1.bias"]).expand(tokens.shape[0], g, d)
    w_in, b_in = sd[lay + "multihead_attn.in_proj_weight"], sd[lay + "multihead_attn.in_proj_bias"]
    wq, wk, wv = w_in.split(d)
    bq, bk, bv = b_in.split(d)
    hd = d // heads

    def split(x):  # (B, L, D) -> (B, heads, L, hd)
        return x.reshape(x.shape[0], x.shape[1], heads, hd).transpose(1, 2)

    Q, K, V = split(t @ wq.T + bq), split(mem @ wk.T + bk), split(mem @ wv.T + bv)
    att = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    a = (att @ V).transpose(1, 2).reshape(t.shape)
    a = a @ sd[lay + "multihead_attn.out_proj.weight"].T + sd[lay + "multihead_attn.out_proj.bias"]
    t = _layer_norm(t + a, sd[lay + "norm2.weight"], sd[lay + "norm2.bias"])
    ff = torch.relu(t @ sd[lay + "linear1.weight"].T + sd[lay + "linear1.bias"])
    ff = ff @ sd[lay + "linear2.weight"].T + sd[lay + "linear2.bias"]
    t = _layer_norm(t + ff, sd[lay + "norm3.weight"], sd[lay + "norm3.bias"])  # (B, G, D)
    pool = sd[p + "duplicate_pooling"]  # (G, D, K)
    k = pool.shape[2]
    cols = []
    for c in range(num_classes):
        cols.append(t[:, c // k] @ pool[c // k, :, c % k])
    return torch.stack(cols, 1) + sd[p + "duplicate_pooling_bias"]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm scales away from 1, random biases and BatchNorm statistics, random head matrices (the
    backbone's convolutions keep their init), so that a wrong operation order or a missing factor
    shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in module.named_parameters():
            if name.endswith("query_embed.weight"):
                continue  # N(0, 1) already, as the official init
            if prm.ndim == 1 and ("norm" in name or name.endswith("bn.weight")):
                prm.copy_(torch.rand(prm.shape, generator=g) + 0.5)
            elif prm.ndim == 1:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
            elif "decoder" in name or not name.startswith("backbone."):
                prm.copy_(torch.randn(prm.shape, generator=g) / math.sqrt(prm.shape[1]))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


@pytest.mark.parametrize(
    "classes,groups,embed,features",
    [(80, None, 768, 64), (9605, 200, 768, 32), (196, None, 64, 48), (1000, -1, 64, 16)],
    ids=["coco", "openimages", "196-default", "1000-default"],
)
def test_eval_output_equals_the_official_formula_in_float64(classes, groups, embed, features):
    head = _randomize(MLDecoder(classes, features, groups, embed)).double()
    x = torch.randn(3, features, 5, 4, dtype=torch.float64)
    sd = {"head." + k: v for k, v in head.state_dict().items()}
    with torch.inference_mode():
        got = head(x)
        want = official_head(x, sd, classes)
    assert got.shape == (3, classes)
    assert (got - want).abs().max().item() <= 1e-10
    tokens = x.flatten(2).transpose(1, 2)  # a ViT's (B, T, F) tokens: the same head
    with torch.inference_mode():
        assert (head(tokens) - want).abs().max().item() <= 1e-10


def test_groups_and_outputs_per_group_are_the_officials():
    assert ml_decoder_groups(80) == (80, 1)  # one query per COCO class
    assert ml_decoder_groups(9605, 200) == (200, 49)  # 9,800 outputs cut to 9,605
    assert ml_decoder_groups(196) == (100, 2) and ml_decoder_groups(1000, -1) == (100, 10)
    assert ml_decoder_groups(5, 100) == (5, 1)  # G = min(G, C)
    with pytest.raises(ConfigError, match="do not cover every class"):
        ml_decoder_groups(100_001, 2000)  # int(C / G + 0.999) rounds down: the official rule's limit
    head = MLDecoder(9605, 8, 200, 16)
    assert tuple(head.decoder.duplicate_pooling.shape) == (200, 16, 49)
    assert not head.decoder.query_embed.weight.requires_grad  # frozen queries
    assert head.decoder.duplicate_pooling_bias.abs().sum() == 0


def test_head_parameter_count_is_the_officials():
    # measured on the official TResNet-M COCO and Open Images heads: 7,212,112 and 14,778,757
    assert sum(p.numel() for p in MLDecoder(80, 2048).parameters()) == 7_212_112
    assert sum(p.numel() for p in MLDecoder(9605, 2048, 200).parameters()) == 14_778_757


def test_head_compiles_fullgraph_and_runs_under_autocast():
    head = _randomize(MLDecoder(20, 16, 10, 32))
    x = torch.randn(2, 16, 3, 3)
    with torch.inference_mode():
        want = head(x)
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-5)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            low = head(x).float()
        assert torch.isfinite(low).all() and (low - want).abs().max() < 0.1


def test_training_mode_applies_dropout_and_trains_only_what_the_official_trains():
    head = _randomize(MLDecoder(6, 8, 3, 16)).train()
    x = torch.randn(4, 8, 2, 2)
    torch.manual_seed(0)
    a = head(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, head(x))  # dropout on
    a.sum().backward()
    assert head.decoder.query_embed.weight.grad is None and head.decoder.duplicate_pooling.grad is not None


# --------------------------------------------------------------------------- official files


def official_file_state(model, variant: str, layout: str, nbt: bool) -> dict:
    """Our ML-Decoder model's weights in an official file's keys and conventions, key by key
    from the reference list: backbone in the inplace_abn layout (scale |w| + 1e-5, so the stored
    weight is w - 1e-5), the head in the ``head.decoder.*`` or the older layout."""
    own = model.state_dict()
    out = {}
    for k, shape in key_list(f"official_ml_decoder_{variant}_keys{'_nbt' if nbt else ''}.tsv"):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
            continue
        ours = k if k.startswith("head.") else "backbone." + to_timm_key(k)
        v = own[ours].clone()
        assert tuple(v.shape) == shape, k
        if ours.endswith("bn.weight"):
            v = v - 1e-5
        out[k] = v
    if layout == "old":
        renamed = {}
        for k, v in out.items():
            for new, old in OLD_LAYOUT.items():
                if k.startswith(new):
                    k = old + k[len(new) :]
                    break
            renamed[k] = v
        out = renamed
    return out


CASES = [
    ("tresnet_m_coco_224", 80, None, "tresnet_m_COCO_224_84_2.pth", "new", False),
    ("tresnet_m_coco_224", 80, None, "tresnet_m_COCO_224_84_2.pth", "old", True),
    ("tresnet_m_openimages_224", 9605, 200, "tresnet_m_open_images_200_groups_86_8.pth", "new", True),
    ("tresnet_m_openimages_224", 9605, 200, "tresnet_m_open_images_200_groups_86_8.pth", "old", False),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,classes,groups,filename,layout,nbt", CASES, ids=[f"{c[1]}-{c[4]}-nbt{int(c[5])}" for c in CASES]
)
def test_official_tresnet_m_file_tags_with_the_official_heads_scores(
    variant, classes, groups, filename, layout, nbt, tmp_path, capsys
):
    from PIL import Image

    from asl.data.transforms import build_infer_transform

    model = _randomize(create_model("tresnet_m", classes, head="ml_decoder", num_groups=groups), seed=3)
    names = {i: f"class{i}" for i in range(classes)}
    path = tmp_path / filename
    torch.save({"model": official_file_state(model, variant, layout, nbt), "idx_to_class": names}, path)
    pic = tmp_path / "pic.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(250, 300, 3, generator=g) * 255).byte().numpy()).save(pic)

    x = build_infer_transform(224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(Image.open(pic).convert("RGB"))[None]
    with torch.inference_mode():
        feats = model.backbone.forward_features(x).double()
    sd = {k: v.double() for k, v in model.state_dict().items() if k.startswith("head.")}
    want = torch.sigmoid(official_head(feats, sd, classes))[0]

    flags = ["--num-classes", classes, "--th", "0", "--top-k", classes, "--json", "--model-name", "tresnet_m"]
    if groups:
        flags += ["--num-of-groups", groups]
    rc, out, err = call("infer", ["--model-path", path, "--pic-path", pic, *flags], capsys)
    assert rc == 0, err
    got = {d["label"]: d["score"] for d in json.loads(out)[0]["labels"]}
    assert len(got) == classes
    got_t = torch.tensor([got[f"class{i}"] for i in range(classes)], dtype=torch.float64)
    assert (got_t - want).abs().max().item() <= 1e-4  # the JSON rounds to 4 decimals: 5e-5 of it
    info = model_from_checkpoint(load_checkpoint(path), path=path)[1]
    assert info["model_name"] == "tresnet_m" and info["image_size"] == 224
    assert info["decoder"]["groups"] == (groups or 80) and info["decoder"]["k"] == (49 if groups else 1)


def _shape_only_state(variant: str) -> dict:
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in key_list(f"official_ml_decoder_{variant}_keys.tsv"):
        state[k] = torch.rand(shape, generator=g) + 0.5 if "running_var" in k else torch.randn(shape, generator=g)
    return state


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,arch,official_name",
    [("tresnet_l_coco_448", "tresnet_v2_l", "tresnet_l"), ("tresnet_xl_coco_640", "tresnet_v2_xl", "tresnet_xl")],
)
def test_official_l_and_xl_files_are_the_v2_backbones(variant, arch, official_name):
    state = _shape_only_state(variant)
    assert detect_official_tresnet(state) == (arch, 80, "ml_decoder")
    ckpt = {"model": state, "idx_to_class": {i: str(i) for i in range(80)}}
    size = {"tresnet_v2_l": 448, "tresnet_v2_xl": 640}[arch]
    zoo = {"tresnet_v2_l": "tresnet_l_COCO__448_90_0.pth", "tresnet_v2_xl": "tresnet_xl_COCO_640_91_4.pth"}[arch]
    # the official command's --model-name tresnet_l / tresnet_xl means that repository's L / XL
    model, info = model_from_checkpoint(ckpt, official_name, path=zoo)
    assert info["model_name"] == arch and info["image_size"] == size
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 80)


def test_half_one_layout_half_the_other_is_refused():
    state = {
        "body.conv1.0.weight": torch.zeros(64, 48, 3, 3),
        "head.decoder.query_embed.weight": torch.zeros(80, 768),
        "head.embed_standart.weight": torch.zeros(768, 2048),
    }
    with pytest.raises(CheckpointError, match="mix two layouts"):
        normalize_state_dict(state, "x.pth")


@pytest.fixture(scope="module")
def small_decoder_file(tmp_path_factory):
    """An ML-Decoder checkpoint of ours: test_resnet, 400 classes in 200 groups of 2."""
    from asl.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("md")
    model = _randomize(create_model("test_resnet", 400, head="ml_decoder", num_groups=200, decoder_embedding=32))
    ckpt = make_checkpoint(
        model,
        model_name="test_resnet",
        class_names=[f"c{i}" for i in range(400)],
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        head="ml_decoder",
    )
    save_checkpoint(ckpt, root / "md.pth")
    make_tagged(root / "d", 2, 2)
    return root


def test_group_and_width_flags_that_disagree_with_the_weights_are_one_error(small_decoder_file, capsys):
    path, pic = small_decoder_file / "md.pth", small_decoder_file / "d" / "img" / "0000.png"
    rc, out, err = call("infer", ["--model-path", path, "--pic-path", pic, "--num-of-groups", "100"], capsys)
    one_error(rc, err, "--num-of-groups 100, but its ML-Decoder head has 200 groups")
    assert out == ""
    rc, _, err = call("validate", ["--model-path", path, "--decoder-embedding", "768"], capsys)
    one_error(rc, err, "--decoder-embedding 768, but its ML-Decoder head is 32 wide")
    rc, _, err = call("export", ["--model-path", path, "--num-of-groups", "7"], capsys)
    one_error(rc, err, "has 200 groups")
    rc, out, _ = call("infer", ["--model-path", path, "--pic-path", pic, "--num-of-groups", "200", "--json"], capsys)
    assert rc == 0 and json.loads(out)[0]["image"].endswith("0000.png")


def test_a_mixed_layout_file_is_one_error_in_every_command(small_decoder_file, tmp_path, capsys):
    ckpt = torch.load(small_decoder_file / "md.pth", weights_only=True)
    ckpt["model"]["head.query_embed.weight"] = ckpt["model"].pop("head.decoder.query_embed.weight")
    torch.save(ckpt, tmp_path / "mixed.pth")
    pic = small_decoder_file / "d" / "img" / "0000.png"
    for script, argv in (
        ("infer", ["--model-path", tmp_path / "mixed.pth", "--pic-path", pic]),
        ("validate", ["--model-path", tmp_path / "mixed.pth", small_decoder_file / "d"]),
        ("export", ["--model-path", tmp_path / "mixed.pth", "--output", tmp_path / "m.onnx"]),
    ):
        rc, _, err = call(script, argv, capsys)
        one_error(rc, err, "mix two layouts")
    assert not (tmp_path / "m.onnx").exists()


def test_ml_decoder_flags_and_backbones_are_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nothing-here"  # the data folder is checked after the head: never reached
    rc, _, err = call("train", [missing, "--dataset", "tagged", "--num-of-groups", "4", *TINY], capsys)
    one_error(rc, err, "add --head ml_decoder")
    rc, _, err = call(
        "train", [missing, "--dataset", "tagged", "--head", "ml_decoder", "--decoder-embedding", "30", *TINY], capsys
    )
    one_error(rc, err, "multiple of 8")

    import asl.models as models

    class Pooled(torch.nn.Module):  # a backbone whose features are already pooled: (B, F)
        pretrained_cfg = {"input_size": (3, 32, 32)}

        def forward_features(self, x):
            return x.mean((2, 3))

    monkeypatch.setattr(models, "_timm_model", lambda name, pretrained_file=None, **kw: Pooled())
    rc, _, err = call("train", [missing, "--dataset", "tagged", "--head", "ml_decoder", *TINY], capsys)
    one_error(rc, err, "needs spatial features or tokens")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- training and export


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", [("test_resnet", "32"), ("test_vit", "160")], ids=["cnn", "vit"])
def test_train_export_and_tag_with_an_ml_decoder(arch, size, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", 24, 8, size=int(size))
    out = tmp_path / "run"
    argv = [data, "--dataset", "tagged", "--output", out, *TINY, "--model-name", arch, "--image-size", size]
    argv += ["--head", "ml_decoder", "--decoder-embedding", "32", "--num-of-groups", "2", "--batch-size", "8"]
    rc, _, err = call("train", argv, capsys)
    assert rc == 0, err
    ckpt = load_checkpoint(out / "best.pth")
    assert ckpt["head"] == "ml_decoder" and ckpt["model"]["head.decoder.query_embed.weight"].shape == (2, 32)
    assert ckpt["model"]["head.decoder.duplicate_pooling"].shape == (2, 32, 2)  # 4 classes in 2 groups
    model, info = model_from_checkpoint(ckpt)
    assert info["decoder"] == {
        "groups": 2,
        "k": 2,
        "embed_dim": 32,
        "num_classes": 4,
        "in_features": info["decoder"]["in_features"],
    }
    rc, out_text, err = call("export", ["--model-path", out / "best.pth", "--output", tmp_path / "m.onnx"], capsys)
    assert rc == 0, err
    diff = float(re.search(r"max \|diff\| ([0-9.e+-]+)", out_text + "\n".join(err)).group(1))
    assert diff <= 1e-4
    pic = data / "img" / "0000.png"
    rc, onnx_out, err = call(
        "infer", ["--model-path", tmp_path / "m.onnx", "--pic-path", pic, "--json", "--th", "0"], capsys
    )
    assert rc == 0, err
    rc, torch_out, err = call(
        "infer", ["--model-path", out / "best.pth", "--pic-path", pic, "--json", "--th", "0"], capsys
    )
    a = {d["label"]: d["score"] for d in json.loads(onnx_out)[0]["labels"]}
    b = {d["label"]: d["score"] for d in json.loads(torch_out)[0]["labels"]}
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 2e-4
    if arch == "test_resnet":  # the exported decoder tags a folder with neither torch nor timm importable
        code = (
            "import sys\n"
            "for m in ('torch', 'timm', 'torchvision'): sys.modules[m] = None\n"
            "from asl import cli\nimport infer\n"
            f"rc = cli.run(infer.main, ['--model-path', {str(tmp_path / 'm.onnx')!r}, '--pic-path', "
            f"{str(data / 'img')!r}, '--tags-out', {str(tmp_path / 'tags')!r}, '--th', '0'])\n"
            "print(rc, [m for m in ('torch', 'timm') if sys.modules.get(m) is not None])"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "0 []", proc.stderr
        tags = (tmp_path / "tags" / "0000.txt").read_text().strip().split(", ")
        assert sorted(tags) == sorted(a)  # --th 0: every class, as the PyTorch path scored them


@pytest.mark.slow
def test_torchrun_trains_an_ml_decoder_as_one_process_would_score_it(tmp_path, capsys):
    import socket

    data = make_tagged(tmp_path / "d", 16, 10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(port), str(REPO / "train.py"), str(data), "--dataset", "tagged", "--output", str(out)]
    cmd += [
        *map(str, TINY),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--head",
        "ml_decoder",
        "--decoder-embedding",
        "16",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = load_checkpoint(out / "best.pth")
    assert best["head"] == "ml_decoder" and not any(k.startswith("module.") for k in best["model"])
    rc, _, err = call(
        "validate", ["--model-path", out / "best.pth", "--workers", "0", "--output", tmp_path / "v"], capsys
    )
    assert rc == 0, err
    single = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert abs(single["mAP"] - best["mAP"]) < 1e-6  # gathered over 2 ranks == one process


def test_linear_weights_start_an_ml_decoder_and_back(tmp_path):
    from asl.checkpoint import load_init_checkpoint

    linear = _randomize(create_model("test_resnet", 4))
    torch.save(linear.state_dict(), tmp_path / "linear.pth")
    md = create_model("test_resnet", 6, head="ml_decoder", decoder_embedding=16)
    result = load_init_checkpoint(md, str(tmp_path / "linear.pth"))
    assert all(
        torch.equal(md.state_dict()["backbone." + k], v)
        for k, v in linear.state_dict().items()
        if not k.startswith("fc.")
    )
    assert result["missing"] and all(k.startswith("head.") for k in result["missing"])  # the decoder starts fresh
    torch.save(_randomize(md, seed=5).state_dict(), tmp_path / "md.pth")
    back = create_model("test_resnet", 3)
    load_init_checkpoint(back, str(tmp_path / "md.pth"))
    assert torch.equal(back.state_dict()["conv1.0.weight"], md.state_dict()["backbone.conv1.0.weight"])


def test_pretrained_backbone_under_an_ml_decoder(tmp_path, monkeypatch):
    """--pretrained with --head ml_decoder: timm's weights for the backbone, bit for bit (its
    ImageNet classifier dropped), the decoder freshly initialised."""
    from asl.pretrained import resolve_pretrained
    from tests.helpers import TAG, lay_out_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    state = lay_out_cache(tmp_path / "hub")
    model = create_model(TAG, 80, head="ml_decoder", pretrained_file=str(resolve_pretrained(TAG).file))
    own = model.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert body and all(torch.equal(own["backbone." + k], state[k]) for k in body)
    assert not any(k.startswith("backbone.fc.") for k in own)


@pytest.mark.slow
def test_an_ml_decoder_run_resumes_and_refuses_another_head(tmp_path, capsys):
    data = make_tagged(tmp_path / "d", 16, 8)
    out = tmp_path / "run"
    base = [data, "--dataset", "tagged", "--output", out, *TINY, "--batch-size", "8", "--epochs", "2"]
    md = ["--head", "ml_decoder", "--decoder-embedding", "16"]
    rc, _, err = call("train", [*base, *md, "--stop-epoch", "1"], capsys)
    assert rc == 0, err
    rc, _, err = call("train", [*base, "--resume", out / "last.pth"], capsys)  # the linear head
    one_error(rc, err, "--head 'ml_decoder' vs 'linear'")
    rc, _, err = call("train", [*base, *md, "--resume", out / "last.pth"], capsys)
    assert rc == 0, err
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_size_flags_beyond_the_machine_are_one_error_before_anything_is_built(tmp_path, capsys, caplog):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    for extra in ([], ["--dry-run"]):
        argv = [data, "--dataset", "tagged", *TINY, "--head", "ml_decoder", "--decoder-embedding", "1048576"]
        rc, _, err = call("train", [*argv, "--output", tmp_path / "o", *extra], capsys)
        one_error(rc, err, "G parameters: training holds")
        assert "--decoder-embedding" in err[-1] and not (tmp_path / "o").exists()
    # more groups than classes: capped, and said
    argv = [data, "--dataset", "tagged", *TINY, "--head", "ml_decoder", "--num-of-groups", "50", "--dry-run"]
    rc, _, err = call("train", [*argv, "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert "--num-of-groups 50 is more than the 4 classes: ML-Decoder uses 4 groups" in caplog.text
    assert caplog.text.count("--num-of-groups 50 is more than") == 1
