"""asl.opening: one opener for a .pth and its exported .onnx, used by validate, infer and export."""

from __future__ import annotations

import numpy as np
import pytest

from asl.errors import ASLError
from asl.images import load_rgb
from asl.opening import open_model


@pytest.fixture(scope="module")
def pair(trained_run, tmp_path_factory):
    from asl import cli
    from asl.export import main

    onnx_file = tmp_path_factory.mktemp("opening") / "m.onnx"
    assert cli.run(main, ["--model-path", str(trained_run["out"] / "best.pth"), "--output", str(onnx_file)]) == 0
    return trained_run["out"] / "best.pth", onnx_file


def test_a_checkpoint_and_its_export_open_alike(pair, trained_run):
    pth, onnx_file = (open_model(str(p)) for p in pair)
    assert (pth.kind, onnx_file.kind) == ("pytorch", "onnx")
    for field in ("model_name", "class_names", "image_size", "mean", "std", "thresholds"):
        assert getattr(pth, field) == getattr(onnx_file, field), field
    assert pth.size_from == onnx_file.size_from == "file" and pth.checkpoint is not None
    pictures = [load_rgb(trained_run["data"] / "img" / f"000{i}.png") for i in range(3)]
    np.testing.assert_allclose(pth.scores(pictures), onnx_file.scores(pictures), atol=1e-4)


def test_flags_apply_to_both_kinds(pair, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    for path in pair:
        m = open_model(str(path), class_names=str(names))
        assert m.class_names == ["a", "b", "c", "d"] and m.named
        with pytest.raises(ASLError, match="--num-classes 7"):
            open_model(str(path), num_classes=7)
    assert open_model(str(pair[0]), image_size=64).image_size == 64
    assert open_model(str(pair[0])).at_size(64).image_size == 64
    with pytest.raises(ASLError, match="does not apply"):
        open_model(str(pair[1]), model_name="resnet50")
    for flags in ({"num_groups": 4}, {"decoder_embedding": 64}):  # an exported head is fixed: refused, not ignored
        with pytest.raises(ASLError, match="drop --(num-of-groups|decoder-embedding)"):
            open_model(str(pair[1]), **flags)
