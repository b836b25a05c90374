"""Helpers the command tests share: run a script's main in this process, check the one error line,
digest a folder's tree, build a decompression-bomb PNG; and the tiny training flags."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from pathlib import Path

from asl import cli

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
