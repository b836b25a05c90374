"""ONNX export (asl/export.py) and torch-free inference (asl/predict.py): parity with PyTorch,
metadata round trip, graph hygiene, infer / validate through onnxruntime, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asl import cli
from asl.config import load_config
from asl.errors import ASLError, CheckpointError, ConfigError

from .conftest import REPO

pytest.importorskip("onnx", reason="export needs onnx (requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="the ONNX path needs onnxruntime (requirements-infer.txt)")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from asl.export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    report = export_onnx(
        load_config(None, {"model_path": str(trained_run["out"] / "best.pth"), "output": str(out / "model.onnx")})
    )
    return out / "model.onnx", report


def test_export_checks_itself_and_carries_its_metadata(trained_run, exported):
    from asl.checkpoint import load_checkpoint
    from asl.predict import OnnxTagger

    path, report = exported
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] <= 1e-4
    assert not report["graph"]["custom"] and not report["graph"]["reflect_pads"]
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # written atomically, nothing left beside it
    ckpt = load_checkpoint(trained_run["out"] / "best.pth")
    tagger = OnnxTagger(str(path), device="cpu")
    assert tagger.class_names == [ckpt["idx_to_class"][k] for k in range(ckpt["num_classes"])]
    assert tagger.image_size == ckpt["image_size"] == 32 and tagger.outputs_scores
    assert list(tagger.mean) == ckpt["mean"] and list(tagger.std) == ckpt["std"]
    assert tagger.meta["model_name"] == "test_resnet" and tagger.meta["resize"] == "pil_squish"
    assert tagger.meta["config"]["dataset"] == "tagged" and tagger.thresholds is None
    assert tagger.fixed_batch == 1  # batch 1 unless --dynamic-batch


def test_numpy_preprocessing_is_infer_pys_bit_for_bit(trained_run):
    from PIL import Image

    from asl.data.transforms import build_infer_transform
    from asl.predict import preprocess

    img = Image.open(trained_run["data"] / "img" / "0003.png").convert("RGB")
    for mean, std in (((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        want = build_infer_transform(48, mean, std)(img).numpy()
        assert np.array_equal(preprocess(img, 48, mean, std), want)


def test_infer_through_onnx_equals_the_pytorch_path(trained_run, exported, capsys):
    import infer

    pics = str(trained_run["data"] / "img")
    assert (
        cli.run(
            infer.main,
            ["--model-path", str(trained_run["out"] / "best.pth"), "--pic-path", pics, "--json", "--th", "0.3"],
        )
        == 0
    )
    want = json.loads(capsys.readouterr().out)
    assert cli.run(infer.main, ["--model-path", str(exported[0]), "--pic-path", pics, "--json", "--th", "0.3"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == len(want) == 72
    assert sum(len(r["labels"]) for r in want) > 20  # the comparison covers many labels
    for a, b in zip(got, want):
        assert a["image"] == b["image"] and [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
        assert np.allclose([x["score"] for x in a["labels"]], [x["score"] for x in b["labels"]], atol=1e-4)


def test_validate_through_onnx_equals_the_pytorch_path(trained_run, exported, tmp_path):
    import validate

    for name, model in (("pt", trained_run["out"] / "best.pth"), ("onnx", exported[0])):
        assert (
            cli.run(validate.main, ["--model-path", str(model), "--workers", "0", "--output", str(tmp_path / name)])
            == 0
        )
    pt, ox = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("pt", "onnx"))
    assert ox["num_images"] == pt["num_images"] == 24
    assert abs(ox["mAP"] - pt["mAP"]) < 1e-3 and abs(ox["OF1"] - pt["OF1"]) < 1e-3
    assert np.abs(np.load(tmp_path / "onnx" / "scores.npy") - np.load(tmp_path / "pt" / "scores.npy")).max() < 1e-4


@pytest.mark.slow  # a subprocess without PyTorch / a wheel build: the slow leg
def test_the_onnx_path_imports_neither_torch_nor_timm(trained_run, exported):
    code = (
        "import sys\n"
        "for m in ('torch', 'timm', 'torchvision'): sys.modules[m] = None  # any import of them now fails\n"
        "from asl import cli\nimport infer\n"
        f"rc = cli.run(infer.main, ['--model-path', {str(exported[0])!r}, '--pic-path', "
        f"{str(trained_run['data'] / 'img' / '0001.png')!r}, '--json'])\n"
        "loaded = [m for m in ('torch', 'timm', 'torchvision') if sys.modules.get(m) is not None]\n"
        "print(rc, loaded)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
    assert json.loads(proc.stdout.strip().splitlines()[0])[0]["image"].endswith("0001.png")


def test_official_tresnet_m_exports_without_reflect_padding(tmp_path, monkeypatch):
    """An official-layout TResNet-M file (inplace_abn keys, no metadata), as the checkpoint tests
    build it: exported with a dynamic batch, its anti-aliasing blurs padded by slices."""
    from asl import export
    from asl.models import create_model

    from .helpers import official_state_from_timm, randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(create_model("tresnet_m", 80))
    ckpt = tmp_path / "MS_COCO_TRresNet_M_224_81.8.pth"
    torch.save({"model": official_state_from_timm(model, "official_asl_tresnet_m_keys.tsv"), "num_classes": 80}, ckpt)
    cfg = load_config(
        None, {"model_path": str(ckpt), "output": str(tmp_path / "m.onnx"), "image_size": 64, "dynamic_batch": True}
    )
    report = export.export_onnx(cfg)
    assert report["blur_rewritten"] == 3 and report["max_abs_diff"] <= 1e-4
    assert report["graph"]["ops"].get("Pad", 0) == 0 and not report["graph"]["custom"]
    assert "InPlaceABN" not in str(report["graph"]["ops"])
    from asl.predict import OnnxTagger

    tagger = OnnxTagger(str(tmp_path / "m.onnx"), device="cpu")
    assert tagger.fixed_batch is None and tagger.run(np.zeros((3, 3, 64, 64), np.float32)).shape == (3, 80)
    # the check is real: without the rewrite the graph has timm's reflect padding, and export refuses it
    monkeypatch.setattr(export, "_rewrite_blur", lambda m: 0)
    with pytest.raises(export.ExportError, match="reflect pads"):
        export.export_onnx(load_config(None, {**cfg.to_dict(), "output": str(tmp_path / "r.onnx")}))
    assert not (tmp_path / "r.onnx").exists()


@pytest.mark.parametrize("pad", [1, 2])
def test_explicit_reflect_padding_is_reflect_padding(pad):
    from asl.export import _explicit_reflect_pad

    x = torch.randn(2, 3, 7, 9)
    assert torch.equal(_explicit_reflect_pad(x, pad), F.pad(x, [pad] * 4, mode="reflect"))


def test_fp16_weights_and_logits(trained_run, tmp_path):
    from asl.export import export_onnx
    from asl.predict import OnnxTagger

    report = export_onnx(
        load_config(
            None,
            {
                "model_path": str(trained_run["out"] / "best.pth"),
                "fp16": True,
                "sigmoid": False,
                "dynamic_batch": True,
                "output": str(tmp_path / "h.onnx"),
            },
        )
    )
    assert report["max_abs_diff"] <= 1e-2 and report["metadata"]["output"] == "logits"
    import onnx

    weights = [t for t in onnx.load(str(tmp_path / "h.onnx")).graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    tagger = OnnxTagger(str(tmp_path / "h.onnx"), device="cpu")
    s = tagger.run(np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    assert s.dtype == np.float32 and ((s >= 0) & (s <= 1)).all()  # logits -> sigmoid in the tagger


def test_bad_input_is_one_error_line(trained_run, exported, tmp_path, capsys):
    import export as export_script
    import infer

    best = str(trained_run["out"] / "best.pth")

    def err(module, argv, fragment):
        rc = cli.run(module.main, [str(a) for a in argv])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    err(export_script, ["--model-path", junk, "--output", tmp_path / "j.onnx"], "junk.pth: refused")
    err(export_script, ["--model-path", best, "--output", exported[0]], "already exists")
    err(export_script, ["--model-path", best, "--output", "/proc/m.onnx"], "cannot write")
    err(export_script, ["--model-path", best, "--output", tmp_path / "m.pt"], "ends in .onnx")
    err(export_script, ["--model-path", best, "--output", tmp_path / "n.onnx", "--num-classes", "7"], "--num-classes 7")
    pic = trained_run["data"] / "img" / "0001.png"
    err(infer, ["--model-path", exported[0], "--pic-path", pic, "--num-classes", "5"], "--num-classes 5")
    err(infer, ["--model-path", junk.with_suffix(".onnx"), "--pic-path", pic], "model not found")
    junk.with_suffix(".onnx").write_bytes(b"\x00garbage")
    err(infer, ["--model-path", junk.with_suffix(".onnx"), "--pic-path", pic], "not a loadable ONNX model")
    # a model exported without asl's metadata: what is missing, and the flag that supplies it
    plain = tmp_path / "plain.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with pytest.warns(Warning):
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 16, 16),),
            str(plain),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
        )
    err(infer, ["--model-path", plain, "--pic-path", pic], "pass --image-size N")
    err(infer, ["--model-path", plain, "--pic-path", pic, "--image-size", "16"], "pass --class-names FILE")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    rc = cli.run(
        infer.main,
        [
            "--model-path",
            str(plain),
            "--pic-path",
            str(pic),
            "--image-size",
            "16",
            "--class-names",
            str(names),
            "--th",
            "0",
            "--json",
        ],
    )
    assert rc == 0 and {x["label"] for x in json.loads(capsys.readouterr().out)[0]["labels"]} <= set("abcd")


def test_a_failed_check_writes_nothing(trained_run, tmp_path, monkeypatch):
    from asl import export

    monkeypatch.setattr(export, "TOLERANCE", {False: -1.0, True: -1.0})  # no output can pass
    with pytest.raises(ASLError, match="was not written"):
        export.export_onnx(
            load_config(None, {"model_path": str(trained_run["out"] / "best.pth"), "output": str(tmp_path / "x.onnx")})
        )
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_model_path():
    from asl.export import export_onnx

    with pytest.raises(ConfigError, match="--model-path"):
        export_onnx(load_config(None, {}))
    with pytest.raises(CheckpointError):
        export_onnx(load_config(None, {"model_path": "/nonexistent.pth", "output": "/tmp/never.onnx"}))
