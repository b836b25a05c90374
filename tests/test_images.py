"""asl.images: pictures read as a viewer shows them, the same way for training, infer.py and ONNX."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from asl.errors import DataError
from asl.images import load_rgb
from tests.conftest import make_tagged
from tests.helpers import TINY, call, fuzzed_dds, one_error, png_bomb


def test_16_bit_grey_png_and_tiff_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(ramp).save(tmp_path / name)
        with Image.open(tmp_path / name) as raw:
            assert raw.mode.startswith("I")  # what PIL hands over: 16-bit values
            clipped = np.asarray(raw.convert("RGB"))[..., 0]
        assert (clipped == 255).mean() > 0.9  # the bug: convert("RGB") clips it all white
        got = np.asarray(load_rgb(tmp_path / name))
        assert got.shape == (8, 8, 3) and (got[..., 0] == got[..., 2]).all()
        np.testing.assert_array_equal(got[..., 0], np.rint(ramp / 257.0).astype(np.uint8))


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    got = np.asarray(load_rgb(tmp_path / "f.tif"))[..., 0]
    np.testing.assert_array_equal(got, np.rint(a * 255).astype(np.uint8))
    assert got.max() == 255


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # red on the left of a landscape picture
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait phone photo stored sideways
    img.save(tmp_path / "p.jpg", exif=exif, quality=95)
    got = load_rgb(tmp_path / "p.jpg")
    assert got.size == (10, 30)  # shown portrait, as a viewer shows it
    top = np.asarray(got)[:5].astype(int)
    assert top[..., 0].mean() > 200 and top[..., 1].mean() < 60  # the red band is on top after the rotation


def test_fuzzed_dds_is_unreadable_not_a_crash(tmp_path):
    with pytest.raises(DataError, match="cannot read image"):
        load_rgb(fuzzed_dds(tmp_path / "x.dds"))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_rgb(fifo)


def test_decompression_bomb_is_skipped_in_training_and_refused_by_infer(trained_run, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=16, n_val=8)
    png_bomb(data / "img" / "0003.png")  # a training image
    png_bomb(data / "img" / "0020.png")  # a validation image
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["bad_images"] == 2 and "DecompressionBombError" in "\n".join(err)
    rc, out, err = call(
        "infer", ["--model-path", trained_run["out"] / "best.pth", "--pic-path", data / "img" / "0003.png"], capsys
    )
    one_error(rc, err, "cannot read image")
    assert "DecompressionBombError" in err[-1] and out == ""
