"""Helpers the command tests share: run a script's main in this process, check the one error line,
digest a folder's tree, build a decompression-bomb PNG; and the tiny training flags."""

from __future__ import annotations

import hashlib
import json
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


def call(script: str, argv, capsys):
    """Run a script's main in this process: (exit code, stdout, non-empty stderr lines)."""
    module = __import__(script)
    rc = cli.run(module.main, [str(a) for a in argv])
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
