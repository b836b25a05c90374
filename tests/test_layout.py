"""The package's shape (docs/architecture.md): the import graph has no circle, no module of
asl/ imports a top-level script, files are written by one helper, the parsers are generated from
the config schema, and the installed package carries its commands and base configs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile

import pytest

from asl import cli, config
from asl.files import atomic_write

from .conftest import REPO

PACKAGE = REPO / "asl"
SCRIPTS = {"train", "validate", "infer", "export"}


def _module_name(path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path):
    """Every module of ``asl`` (or top-level name) that ``path`` imports, at module level or inside a
    function (a lazy import dodges nothing: it is still an edge)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out.update(
                n
                for n in names
                if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                or (PACKAGE.parent / n.replace(".", "/") / "__init__.py").exists()
            )
            out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _graph():
    mods = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in _imports(p) if t in mods and t != m} for m, p in mods.items()}
    return mods, graph


def test_import_graph_has_no_circle():
    _, graph = _graph()
    # a package's __init__ re-exporting its own modules is not a dependency between rooms
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
    # the circle the review found: models must not reach back into checkpoint
    checkpoint = [m for m in graph if m == "asl.checkpoint" or m.startswith("asl.checkpoint.")]
    assert not any(m in graph["asl.models"] for m in checkpoint)
    assert any("asl.models" in graph[m] for m in checkpoint)


def test_no_module_of_the_package_imports_a_top_level_script():
    mods, _ = _graph()
    for m, p in mods.items():
        bad = {t for t in _imports(p) if t.split(".")[0] in SCRIPTS}
        assert not bad, (m, bad)
        assert 'train.py"' not in p.read_text(encoding="utf-8").replace("'", '"'), m  # no script started by path


def test_every_file_a_command_writes_arrives_whole(trained_run, tmp_path, monkeypatch):
    """Each file of a run, of validate.py --output and of export.py is renamed into place by
    atomic_write: a crash or a full disk never leaves half a file under its final name."""
    from asl.config import load_config
    from asl.trainer import fit

    renamed = set()
    real = os.replace

    def spy(src, dst):
        renamed.add(os.path.abspath(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = tmp_path / "run"
    fit(
        load_config(
            None,
            {
                "dataset": "tagged",
                "data_root": str(trained_run["data"]),
                "model_name": "test_resnet",
                "image_size": 32,
                "batch_size": 16,
                "epochs": 1,
                "workers": 0,
                "output": str(out),
            },
        )
    )
    assert (
        cli.run(
            cli.command("validate"),
            ["--model-path", str(out / "best.pth"), "--output", str(tmp_path / "v"), "--workers", "0", "--calibrate"],
        )
        == 0
    )
    assert (
        cli.run(cli.command("export"), ["--model-path", str(out / "best.pth"), "--output", str(tmp_path / "m.onnx")])
        == 0
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".asl-run.lock"]
    assert len(written) >= 10  # last, best, metrics, config, curves, per-class AP, validate's 4, the ONNX file
    assert {str(p.absolute()) for p in written} <= renamed


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "x.bin"
    atomic_write(dest, b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(dest, writer=broken)
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    atomic_write(dest, "né")
    assert dest.read_text(encoding="utf-8") == "né"
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_parsers_are_generated_from_the_schema():
    for command, fields in (
        ("train", cli.TRAIN_FIELDS),
        ("validate", cli.VALIDATE_FIELDS),
        ("infer", cli.INFER_FIELDS),
    ):
        assert fields == config.fields_for(command)
        parser = cli.build_parser(command, "", fields)
        dests = {a.dest for a in parser._actions}
        assert set(fields) <= dests
        for name in fields:  # each field's own spellings, from its metadata
            for flag in config.flags_of(name):
                assert flag in parser._option_string_actions, (command, flag)
    # a setting only YAML could set before is a flag now, with its range from the schema
    cfg = cli.parse_args(cli.build_parser("t", "", cli.TRAIN_FIELDS), ["--focal-gamma", "3", "--pct-start", "0.3"])
    assert cfg.focal_gamma == 3.0 and cfg.pct_start == 0.3
    assert config.RANGES["pct_start"][1] == "in (0, 1)"
    # "unset" is representable: what validate / infer take from the checkpoint is None until resolved
    assert config.Config().model_name is None and config.Config().image_size is None
    # the official defaults live in one place
    from asl import zoo

    assert zoo.default_image_size("tresnet_l") == 448 and zoo.default_image_size("tresnet_m") == 224
    assert zoo.default_image_size("resnet50") == 224
    # result fields: where a run writes, how often it logs, its workers do not change its result
    assert {"output", "workers", "print_freq", "resume", "overwrite"}.isdisjoint(config.RESULT_FIELDS)
    assert {"lr", "loss", "seed", "image_size", "ema_warmup"} <= set(config.RESULT_FIELDS)


@pytest.mark.slow
def test_commands_run_from_the_package():
    for module in ("asl.train", "asl.validate", "asl.infer", "asl.study", "asl.export"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert proc.returncode == 0 and "usage:" in proc.stdout, (module, proc.stderr)


@pytest.mark.slow  # a subprocess without PyTorch / a wheel build: the slow leg
def test_wheel_ships_the_commands_and_base_configs(tmp_path):
    import shutil

    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ and *.egg-info in the repository
    shutil.copytree(REPO / "asl", src / "asl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("asl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = z.read(entry).decode()
    assert {
        "asl/configs/demo.yaml",
        "asl/configs/finetune.yaml",
        "asl/trainer.py",
        "asl/study/__init__.py",
        "asl/study/report.py",
    } <= names
    for script, target in (
        ("asl-train", "asl.train:console"),
        ("asl-validate", "asl.validate:console"),
        ("asl-infer", "asl.infer:console"),
        ("asl-study", "asl.study:console"),
        ("asl-export", "asl.export:console"),
        ("asl-data", "asl.cli:data_console"),
    ):
        assert f"{script} = {target}" in scripts
    assert not [n for n in names if n.split("/")[0] in {"train.py", "validate.py", "infer.py", "tests"}]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_row_on_tiny_shapes(tmp_path):
    """bench/bench_gpu.py is measured on a GPU; here its code paths run on the CPU (no figures)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "4",
            "--reps",
            "1",
            "--no-compile",
            "--jpeg-images",
            "16",
            "--jpeg-steps",
            "2",
            "--workers",
            "0",
            "--coco-root",
            str(tmp_path / "coco"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("official-style loop", "engine (default)", "engine + channels_last", "JPEGs", "(64, 80)"):
        assert row in proc.stdout, row


def test_the_requirements_files_are_generated_from_pyproject():
    """One dependency list: every requirements*.txt is what tools/requirements.py writes from pyproject.toml."""
    pytest.importorskip("tomllib", reason="tools/requirements.py reads pyproject.toml with tomllib (Python 3.11+)")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import requirements
    finally:
        sys.path.pop(0)
    files = requirements.generate()
    assert set(files) == {p.name for p in REPO.glob("requirements*.txt")}
    for name, text in files.items():
        assert (REPO / name).read_text(encoding="utf-8") == text, f"{name}: run python tools/requirements.py"
    assert "torch" not in {
        requirements._name(r) for r in files["requirements-infer.txt"].splitlines() if r and not r.startswith("#")
    }


def test_every_console_script_is_one_entry_point_that_logs(trained_run, tmp_path, monkeypatch, capsys):
    """Each [project.scripts] entry, called as pip's wrapper calls it (``sys.argv`` set, then the
    function): it runs the command and its first line is the command's own (an INFO line for the
    commands that log, the first output line for the others)."""
    import importlib

    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    best, data = trained_run["out"] / "best.pth", trained_run["data"]
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(
        f"name: s\nbase_config: {REPO / 'configs' / 'demo.yaml'}\nbaseline: a\noutput: {tmp_path / 'r'}\n"
        "seeds: [0]\nsettings: [{name: a, overrides: {loss: bce}}]\n"
        "experiments: [{name: e, settings: [a], lrs: [0.001]}]\n"
    )
    argv = {
        "asl-train": [
            data,
            "--dataset",
            "tagged",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--no-pretrained",
            "--dry-run",
        ],
        "asl-validate": [data, "--model-path", best, "--workers", "0"],
        "asl-infer": ["--model-path", best, "--pic-path", data / "img" / "0000.png"],
        "asl-export": ["--model-path", best, "--output", tmp_path / "m.onnx"],
        "asl-study": [study_yaml, "--dry-run"],
        "asl-data": ["inspect", data, "--output", tmp_path / "insp"],
    }
    first = {
        "asl-train": "tagged ",  # the dataset summary, logged at INFO
        "asl-validate": "validating test_resnet at 32 px",
        "asl-infer": "0000.png: ",
        "asl-export": "onnxruntime vs PyTorch on 4 pictures",
        "asl-study": "study s: 1 experiments over 1 settings",
        "asl-data": f"{data}: tagged",
    }
    assert set(scripts) == set(argv)
    for script, target in scripts.items():
        module, func = target.split(":")
        console = getattr(importlib.import_module(module), func)
        monkeypatch.setattr(sys, "argv", [script, *map(str, argv[script])])
        with pytest.raises(SystemExit) as info:
            console()
        out, err = capsys.readouterr()
        assert info.value.code == 0, (script, err)
        lines = [ln for ln in (err + out).splitlines() if ln.strip() and not ln.startswith("warning")]
        assert any(first[script] in ln for ln in lines[:3]), (script, lines[:3])


def test_the_architecture_map_lists_every_module_and_names_what_exists():
    """docs/architecture.md's map: every module of the package has its line, every line is a module,
    and every code name a line mentions (check_apart, RunLock, OFFICIAL_THRE) is in the package."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```\n", 2)[1]
    listed, names, parents = set(), set(), []
    for line in block.splitlines():
        if line[:1] not in (" ", ""):  # a top-level entry (asl/, bench/, tests/): the package's lines end
            parents = [] if line.startswith(("bench/", "tools/", "tests/", "reports/")) else parents
            continue
        m = re.match(r"^( +)((?:[a-z_]+\.py )*[a-z_]+(?:\.py|/))(?:\s|$)", line)
        if m and len(m.group(1)) in (2, 4):
            depth = len(m.group(1)) // 2  # asl/ entries at 2 spaces, data/ entries at 4
            for entry in m.group(2).split():  # "train.py validate.py ...": one line for several
                parents = parents[: depth - 1] + [entry]
                listed.add("asl/" + "".join(parents))
        if parents:
            names.update(re.findall(r"\b(?:[a-z]+_[a-z0-9_]+|[A-Z][a-z]+[A-Z]\w*|[A-Z]{2,}_[A-Z_]+)\b", line))
    files = {f"asl/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    folders = {f.rsplit("/", 1)[0] + "/" for f in files if f.count("/") > 1}
    study = {f for f in files if f.startswith("asl/study/")}  # named in study/'s line
    missing = sorted(
        f for f in files - study if f not in listed and not (f.endswith("__init__.py") and f[:-11] in listed)
    )
    assert not missing, f"modules without a line in docs/architecture.md: {missing}"
    gone = sorted(e for e in listed if e not in files and e not in folders)
    assert not gone, f"docs/architecture.md lists what the package does not hold: {gone}"
    source = " ".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    unknown = sorted(n for n in names if not re.search(rf"\b{n}\b", source))
    assert not unknown, f"docs/architecture.md names what the package does not hold: {unknown}"
