"""The study machinery (asl/study.py) on a micro grid of a few steps: runs in subprocesses
(``python -m asl.train``), the record file and its config-hash cache, lr_from, a sweep with a
baseline point, the paired report and its figures."""

from __future__ import annotations

import json

import pytest

from asl import cli, study
from asl.config import dump_config
from asl.errors import ConfigError
from asl.study.report import _interaction_lines, _settle_fraction, _trend_lines

from .conftest import REPO, make_tagged

pytestmark = pytest.mark.slow  # trains in subprocesses


def _spec(tmp_path, data, experiments, seeds=(0, 1)):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"dataset: tagged\ndata_root: {data}\nmodel_name: test_resnet\nimage_size: 32\nbatch_size: 8\n"
        "workers: 0\nepochs: 2\nema_decay: 0.9\n"
    )
    spec = tmp_path / "study.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "micro",
                "base_config": str(base),
                "seeds": list(seeds),
                "baseline": "bce",
                "output": str(tmp_path / "reports"),
                "settings": [
                    {"name": "bce", "overrides": {"loss": "bce"}},
                    {"name": "asl", "overrides": {"loss": "asl", "gamma_neg": 4, "clip": 0.05}},
                    {"name": "adaptive", "overrides": {"loss": "adaptive_asl"}},
                ],
                "experiments": experiments,
                "quick": {"seeds": [0], "experiments": ["main"]},
            }
        )
    )
    return spec


def test_micro_study(tmp_path, capsys):
    data = make_tagged(tmp_path / "data", n_train=24, n_val=12)
    spec = _spec(
        tmp_path,
        data,
        [
            {"name": "main", "settings": ["bce", "asl", "adaptive"], "lrs": [2e-3], "quartiles": True},
            {
                "name": "noisy",
                "settings": ["bce", "asl"],
                "lr_from": "main",
                "overrides": {"label_noise": 0.5},
                "compare_to": "main",
            },
            {
                "name": "sweep",
                "settings": ["asl"],
                "lr_from": "main",
                "axis": "gamma-",
                "baseline_point": "g4",
                "points": [
                    {"name": "g4", "value": 4, "overrides": {}},
                    {"name": "g0", "value": 0, "overrides": {"gamma_neg": 0}},
                ],
            },
        ],
    )
    assert cli.run(study.main, [str(spec), "--jobs", "2"]) == 0
    root = tmp_path / "reports" / "micro"
    text = (root / "report.md").read_text()
    # main: 3 settings x 2 seeds; noisy: 4 more; sweep: its g4 point is main's asl run (same config hash)
    records = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 12 and len({study.record_key(r) for r in records}) == 12
    assert all(len(r["epochs"]) == 2 and len(r["per_class_ap"]["ap"]) == 4 for r in records)
    assert not list((root / "work").glob("*/last.pth"))  # finished runs keep best.pth only
    # adaptive gamma-: one value per optimizer step (24 images / batch 8 = 3 steps per epoch, 2 epochs)
    assert "Adaptive γ−: final" in text and (root / "main_gamma.png").exists()
    ada = [r for r in records if r["config"]["loss"] == "adaptive_asl"]
    recs = ada[0]["epochs"]
    assert [len(r["gamma_neg_steps"]) for r in recs] == [3, 3]
    assert recs[-1]["gamma_neg_steps"][-1] == pytest.approx(recs[-1]["gamma_neg"], abs=1e-4)
    assert "| asl | 0.002 | 2 |" in text and "| g0 | asl | 0.002 | 2 |" in text
    assert text.count(" [") >= 4  # paired differences with their confidence intervals
    assert "by class-frequency quartile" in text and "Change of each setting's advantage" in text
    for fig in ("main_curves.png", "noisy_curves.png", "sweep_sweep.png"):
        assert (root / fig).stat().st_size > 1000
    noisy = [r for r in records if r["config"]["label_noise"] == 0.5]
    assert len(noisy) == 4
    stamp = (root / "runs.jsonl").stat().st_mtime_ns, (root / "runs.jsonl").read_bytes()
    logs = {p: p.stat().st_mtime_ns for p in (root / "work").glob("*.log")}
    assert len(logs) == 12
    capsys.readouterr()
    assert cli.run(study.main, [str(spec)]) == 0  # finished runs are reused, not retrained
    assert ((root / "runs.jsonl").stat().st_mtime_ns, (root / "runs.jsonl").read_bytes()) == stamp
    assert {p: p.stat().st_mtime_ns for p in (root / "work").glob("*.log")} == logs
    # the quick profile is labelled and keeps only its experiments and seeds
    assert cli.run(study.main, [str(spec), "--quick", "--report-only"]) == 0
    quick = (tmp_path / "reports" / "micro_quick" / "report.md").read_text()
    assert "QUICK PROFILE" in quick and "noisy" not in quick
    assert "3 of 3 planned runs finished" in quick  # seed 0 of main, shared with the full study


def test_interrupted_run_resumes(tmp_path):
    data = make_tagged(tmp_path / "data", n_train=24, n_val=12)
    spec = _spec(tmp_path, data, [{"name": "main", "settings": ["bce"], "lrs": [1e-3]}], seeds=[0])
    s = study.load_study(str(spec))
    (run,) = study.run_study(s, dry_run=True)["main"]
    # a run stopped after its first epoch: last.pth and one metrics line
    cfg = run.cfg.__class__(**{**run.cfg.to_dict(), "epochs": 2, "stop_epoch": 1})
    run.dir.mkdir(parents=True)
    stop_yaml = run.dir.parent / "stop.yaml"  # beside the run's folder, which holds the run's files alone
    dump_config(cfg, stop_yaml)
    import train

    assert cli.run(train.main, ["--config", str(stop_yaml), "--overwrite"]) == 0
    assert len(run.records()) == 1 and not run.done()
    study.execute([run], jobs=1)
    recs = run.records()
    assert [r["epoch"] for r in recs] == [0, 1]
    assert "resumed from" in study.run_log(run).read_text()


def test_settle_fraction():
    assert _settle_fraction([4.0, 3.0, 2.0, 2.05, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]) == 0.2
    assert _settle_fraction([4.0] * 5) == 0.0
    assert _settle_fraction([1.0, 2.0, 3.0, 4.0]) == 0.75


def test_seed_slopes_fit_a_line_per_seed_and_skip_incomplete_seeds():
    xs = [0.0, 1.0, 2.0, 4.0]
    # seed 0 lies on y = 3 - 0.5 x, seed 1 on y = 1 + 2 x; seed 2 misses a point and must be left out
    pts = [{0: 3 - 0.5 * x, 1: 1 + 2 * x, 2: 9.0} for x in xs]
    del pts[1][2]
    assert study.seed_slopes(xs, pts) == pytest.approx([-0.5, 2.0])
    # a flat sweep has slope 0 whatever its level
    assert study.seed_slopes(xs, [{0: 5.0}] * 4) == pytest.approx([0.0])


def test_study_spec_is_checked(tmp_path):
    def write(d):
        p = tmp_path / "s.yaml"
        p.write_text(
            json.dumps(
                {
                    "name": "x",
                    "base_config": "c.yaml",
                    "seeds": [0],
                    "baseline": "a",
                    "settings": [{"name": "a", "overrides": {}}],
                    **d,
                }
            )
        )
        return str(p)

    with pytest.raises(ConfigError, match="unknown config keys lossy"):
        study.load_study(write({"settings": [{"name": "a", "overrides": {"lossy": 1}}], "experiments": []}))
    with pytest.raises(ConfigError, match="unknown key lrz"):
        study.load_study(write({"experiments": [{"name": "e", "settings": ["a"], "lrz": [1]}]}))
    with pytest.raises(ConfigError, match="no setting named 'b'"):
        study.load_study(write({"experiments": [{"name": "e", "settings": ["b"], "lrs": [1e-3]}]}))
    with pytest.raises(ConfigError, match="earlier experiment"):
        study.load_study(write({"experiments": [{"name": "e", "settings": ["a"], "lr_from": "f"}]}))
    assert cli.run(study.main, [write({"experiments": [{"name": "e", "settings": ["a"]}]})]) == 2
    full = study.load_study(str(REPO / "configs" / "study_demo.yaml"))
    quick = study.load_study(str(REPO / "configs" / "study_demo.yaml"), quick=True)
    assert quick.name == "demo_quick" and quick.seeds == [0, 1] and len(quick.experiments) < len(full.experiments)


def test_sweep_interaction_and_trend_lines_pair_by_seed():
    def run(m):
        r = study.Run("e", "", "", 0.0, 0, {}, None, "", None)
        r._finished = [{"mAP": m, "mAP_ema": None}]
        return r

    e = study.Experiment(
        "e", ["a", "b"], axis="m", baseline_point="p0", points=[{"name": f"p{i}", "value": float(i)} for i in range(3)]
    )
    # a loses 1 per step on every seed; b gains 1 per step on seed 0 and 3 on seed 1
    chosen = {(f"p{i}", "a"): {0: run(10.0 - i), 1: run(20.0 - i)} for i in range(3)}
    chosen.update({(f"p{i}", "b"): {0: run(10.0 + i), 1: run(20.0 + 3 * i)} for i in range(3)})
    inter = " ".join(_interaction_lines(e, chosen))
    # p1: b's Δ minus a's is (1 + 1) on seed 0 and (3 + 1) on seed 1 -> mean 3; p2: (2 + 2), (6 + 2) -> 6
    assert "`b` at p1: +3.00" in inter and "`b` at p2: +6.00" in inter
    trend = " ".join(_trend_lines(e, chosen, baseline="a"))
    assert "`a` -1.000" in trend and "`b` +2.000" in trend and "gain over `a`: `b` +3.000" in trend


def test_cache_key_covers_the_result_and_outlives_new_fields(tmp_path):
    from asl.config import Config, load_config

    cfg = load_config(str(REPO / "configs" / "demo.yaml"))
    key = study.config_key(cfg)
    # where a run writes, how often it logs, how many loader workers: the same run
    same = cfg.__class__(**{**cfg.to_dict(), "output": "x", "workers": 0, "print_freq": 7, "overwrite": True})
    assert study.config_key(same) == key
    assert study.config_key(cfg.__class__(**{**cfg.to_dict(), "lr": 3e-3})) != key
    # a record written before a field existed (here: ema_warmup) keeps its key
    store = study.RunStore(tmp_path / "runs.jsonl")
    assert store.add(cfg, [{"epoch": 0, "mAP": 1.0}], None) == key
    line = json.loads((tmp_path / "runs.jsonl").read_text())
    del line["config"]["ema_warmup"]
    (tmp_path / "runs.jsonl").write_text(json.dumps(line) + "\n")
    again = study.RunStore(tmp_path / "runs.jsonl")
    assert again.get(key)["epochs"] == [{"epoch": 0, "mAP": 1.0}] and len(again) == 1
    assert Config().ema_warmup is False


def test_old_run_folders_are_converted_not_retrained(tmp_path):
    from asl.config import load_config

    cfg = load_config(str(REPO / "configs" / "demo.yaml"), {"epochs": 2})
    old = tmp_path / "runs"
    for name, n_epochs in (("aaa", 2), ("bbb", 1)):  # bbb was interrupted after one epoch
        d = old / name
        d.mkdir(parents=True)
        run_cfg = cfg.__class__(**{**cfg.to_dict(), "seed": len(name) + n_epochs, "output": str(d)})
        dump_config(run_cfg, d / "study_config.yaml")
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "mAP": 10.0 + e}) + "\n" for e in range(n_epochs))
        )
        (d / "per_class_ap.json").write_text(
            json.dumps({"epoch": n_epochs - 1, "class_names": ["a", "b"], "ap": [0.5, None], "ap_ema": None})
        )
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    store = study.RunStore(tmp_path / "runs.jsonl")
    assert study.import_run_folders(old, store) == (1, 1)
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before  # nothing in them changed
    (rec,) = list(study.RunStore(tmp_path / "runs.jsonl"))
    assert [e["mAP"] for e in rec["epochs"]] == [10.0, 11.0]
    assert rec["per_class_ap"] == {"epoch": 1, "ap": [0.5, None], "ap_ema": None}
    assert study.record_key(rec) == study.config_key(load_config(str(old / "aaa" / "study_config.yaml")))


def test_the_converted_demo_records_regenerate_the_quick_report(tmp_path, monkeypatch):
    """reports/demo/runs.jsonl (the 206 runs converted from reports/demo/runs/<hash>/) gives the
    quick profile's report as committed, table for table, with nothing to train."""
    monkeypatch.chdir(REPO)  # the study's paths (configs/demo.yaml, data/demo) are the repository's
    spec = load_study_copy(tmp_path)
    assert cli.run(study.main, [str(spec), "--quick", "--dry-run"]) == 0
    assert cli.run(study.main, [str(spec), "--quick", "--report-only"]) == 0
    made = (tmp_path / "reports" / "demo_quick" / "report.md").read_text(encoding="utf-8")
    committed = (REPO / "reports" / "demo_quick" / "report.md").read_text(encoding="utf-8")
    assert made.replace(str(spec), "configs/study_demo.yaml") == committed


def load_study_copy(tmp_path):
    import shutil

    import yaml

    raw = yaml.safe_load((REPO / "configs" / "study_demo.yaml").read_text(encoding="utf-8"))
    raw["output"] = str(tmp_path / "reports")
    (tmp_path / "reports" / "demo").mkdir(parents=True)
    shutil.copy(REPO / "reports" / "demo" / "runs.jsonl", tmp_path / "reports" / "demo" / "runs.jsonl")
    spec = tmp_path / "study_demo.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return spec
