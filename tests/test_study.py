"""tools/study.py on a micro grid: runs, reuse of finished runs, paired report."""

from __future__ import annotations

import json
import sys

import pytest

from asl import cli

from .conftest import REPO, make_tagged


def test_micro_study(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    import study

    data = make_tagged(tmp_path / "data", n_train=24, n_val=12)
    base = tmp_path / "base.yaml"
    base.write_text(f"dataset: tagged\ndata_root: {data}\nmodel_name: test_resnet\nimage_size: 32\nbatch_size: 8\n"
                    "workers: 0\nepochs: 1\nema_decay: 0.9\n")
    spec = tmp_path / "study.yaml"
    spec.write_text(json.dumps({
        "name": "micro", "base_config": str(base), "seeds": [0, 1], "lrs": [2e-3], "baseline": "bce",
        "output": str(tmp_path / "reports"),
        "settings": [{"name": "bce", "overrides": {"loss": "bce"}},
                     {"name": "asl", "overrides": {"loss": "asl", "gamma_neg": 4, "clip": 0.05}}],
        "variants": [{"name": "noisy", "overrides": {"label_noise": 0.5}}]}))
    assert cli.run(study.main, [str(spec)]) == 0
    text = (tmp_path / "reports" / "micro" / "report.md").read_text()
    assert "| bce | 0.002 |" in text and "| asl | 0.002 |" in text
    assert text.count("[") >= 2  # the paired difference's confidence interval
    runs = sorted((tmp_path / "reports" / "micro" / "runs").rglob("metrics.jsonl"))
    assert len(runs) == 4
    cfg = (runs[0].parent / "config.yaml").read_text()
    assert "label_noise: 0.5" in cfg
    stamp = runs[0].stat().st_mtime
    capsys.readouterr()
    assert cli.run(study.main, [str(spec)]) == 0  # finished runs are reused, not rerun
    assert runs[0].stat().st_mtime == stamp


def test_study_spec_is_checked(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import study

    bad = tmp_path / "s.yaml"
    bad.write_text(json.dumps({"name": "x", "base_config": "c.yaml", "seeds": [0], "lrs": [1e-3], "baseline": "a",
                               "settings": [{"name": "a", "overrides": {"lossy": 1}}]}))
    with pytest.raises(Exception, match="unknown config keys"):
        study.load_study(str(bad))
    assert study.load_study(str(REPO / "configs" / "study_demo.yaml")).baseline == "bce"
