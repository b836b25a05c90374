"""Helpers the tests share: run a script's main in this process (or a script in a subprocess), check
the one error line, digest a folder's tree, build odd pictures (a decompression-bomb PNG, a fuzzed
DDS), official-layout TResNet weights, a laid-out Hugging Face cache; and the tiny training flags."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import torch

from asl import cli

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--no-pretrained",
    "--model-name",
    "test_resnet",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--workers",
    "0",
]


def call(script, argv, capsys):
    """Run a script's main (``script``: a top-level script's name, or a ``main`` function) in this
    process: (exit code, stdout, non-empty stderr lines)."""
    main = script if callable(script) else __import__(script).main
    rc = cli.run(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def one_error(rc, err, fragment):
    assert rc == 2, err
    assert err and err[-1].startswith("error: ") and sum(ln.startswith("error: ") for ln in err) == 1, err
    assert fragment in err[-1], err[-1]


def tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def png_bomb(path: Path, side: int = 50_000) -> Path:
    """A 60-byte PNG that declares side x side pixels (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def validation_metrics(argv, tmp_path, capsys, name):
    """validate.py run in this process with `argv`: its metrics.json."""
    rc, _, err = call("validate", [*argv, "--workers", "0", "--output", tmp_path / name], capsys)
    assert rc == 0, err
    return json.loads((tmp_path / name / "metrics.json").read_text())


FIXTURES = Path(__file__).resolve().parent / "fixtures"  # the official files' key lists and shapes


def key_list(name: str):
    """[(key, shape)] of a reference key list in tests/fixtures (``key\tshape\tdtype`` rows)."""
    rows = [line.split("\t") for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    return [(k, tuple(int(s) for s in re.findall(r"\d+", shape))) for k, shape, _ in rows]


def to_timm_key(k: str) -> str:
    """timm's own renaming rules of the official TResNet layout (timm.models.tresnet.checkpoint_filter_fn),
    key side only."""
    k = re.sub(r"conv(\d+)\.0.0", lambda x: f"conv{int(x.group(1))}.conv", k)
    k = re.sub(r"conv(\d+)\.0.1", lambda x: f"conv{int(x.group(1))}.bn", k)
    k = re.sub(r"conv(\d+)\.0", lambda x: f"conv{int(x.group(1))}.conv", k)
    k = re.sub(r"conv(\d+)\.1", lambda x: f"conv{int(x.group(1))}.bn", k)
    k = re.sub(r"downsample\.(\d+)\.0", lambda x: f"downsample.{int(x.group(1))}.conv", k)
    return re.sub(r"downsample\.(\d+)\.1", lambda x: f"downsample.{int(x.group(1))}.bn", k)


# --------------------------------------------------------------------------- shared by several test modules


def run_script(script, *args, cwd=REPO):
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc, fragment, after_logs=False):
    """Exit 2 and one ``error:`` line, the only stderr line (or, mid-run, the last after the logs)."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert len(lines) == 1 or after_logs, proc.stderr
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    assert "Traceback" not in proc.stderr
    assert fragment in lines[-1]


def fuzzed_dds(path):
    """A DDS header with an unsupported pixel format: PIL raises NotImplementedError, not OSError."""
    header = bytearray(b"DDS " + (124).to_bytes(4, "little") + bytes(120))
    header[76:80] = (32).to_bytes(4, "little")  # pixel-format size
    header[80:84] = (0x4).to_bytes(4, "little")  # DDPF_FOURCC
    header[84:88] = b"ZZZZ"
    path.write_bytes(bytes(header) + bytes(64))
    return path


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


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


TAG = "resnet10t.c3_in1k"


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(root, tag: str = TAG, arch: str = "resnet10t", seed: int = 0):
    """What huggingface_hub leaves after one download of timm/<tag>: the weights timm expects
    (1000-class ImageNet head) under snapshots/<commit>/, and refs/main naming the commit."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(arch, num_classes=1000).state_dict().items()}
    repo = root / f"models--timm--{tag}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file(state, repo / "snapshots" / COMMIT / "model.safetensors")
    return state
