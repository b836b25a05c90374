"""A study's YAML: its settings and experiments, read strictly."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..config import FIELDS, load_yaml
from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    name: str
    settings: List[str]
    title: str = ""
    claim: str = ""
    lrs: List[float] = field(default_factory=list)
    lr_from: Optional[str] = None  # each setting at its best lr in that experiment
    lr_setting: Optional[str] = None  # ...or every setting at this setting's best lr there
    seeds: Optional[List[int]] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    points: List[Dict[str, Any]] = field(default_factory=list)  # [{name, value, overrides}]
    axis: str = ""
    baseline: Optional[str] = None
    baseline_point: Optional[str] = None  # sweeps: Δ against this point of the same setting
    compare_to: Optional[str] = None  # same setting and seed in that experiment: the paired change
    quartiles: bool = False  # AP gain by training-frequency quartile of the classes
    quick: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    base_config: str
    seeds: List[int]
    baseline: str
    settings: List[Dict[str, Any]]
    experiments: List[Experiment]
    base_overrides: Dict[str, Any] = field(default_factory=dict)
    output: str = "reports"
    quick: Dict[str, Any] = field(default_factory=dict)
    is_quick: bool = False
    runs_name: str = ""  # the full study's name: its quick profile shares its runs folder

    def setting(self, name: str) -> Dict[str, Any]:
        return next(s for s in self.settings if s["name"] == name)


def _strict(cls, raw: Dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)} - {"is_quick", "runs_name"}
    unknown = sorted(set(map(str, raw)) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in raw
    ]
    if required:
        raise ConfigError(f"{where}: missing key{'s' if len(required) > 1 else ''} {', '.join(required)}")
    try:
        return cls(**raw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_overrides(overrides: Dict[str, Any], where: str) -> None:
    bad = sorted(set(overrides) - set(FIELDS))
    if bad:
        raise ConfigError(f"{where}: unknown config keys {', '.join(bad)}")


def _quick_profile(raw: Dict[str, Any]) -> Dict[str, Any]:
    """The YAML with its ``quick:`` profile applied (fewer experiments, other base overrides)."""
    q = dict(raw.get("quick") or {})
    keep = q.pop("experiments", None)
    base = {**(raw.get("base_overrides") or {}), **q.pop("base_overrides", {})}
    raw = {**raw, **q, "base_overrides": base, "name": f"{raw.get('name', 'study')}_quick"}
    if keep is not None:
        raw["experiments"] = [e for e in raw.get("experiments", []) if e.get("name") in keep]
    return raw


def load_study(path: str, quick: bool = False) -> Study:
    """Read and check a study YAML; ``quick`` applies its ``quick:`` profile (and each experiment's)."""
    raw = load_yaml(path)
    runs_name = raw.get("name", "study")
    if quick:
        raw = _quick_profile(raw)
    exps = []
    for i, e in enumerate(raw.get("experiments") or []):
        if not isinstance(e, dict):
            raise ConfigError(f"{path}: experiment {i} is not a mapping")
        if quick and e.get("quick"):
            e = {**e, **e["quick"]}
        exps.append(_strict(Experiment, e, f"{path}: experiment {e.get('name', i)!r}"))
    study = _strict(Study, {**raw, "experiments": exps}, path)
    study.is_quick, study.runs_name = quick, runs_name
    try:
        study.seeds = [int(s) for s in study.seeds]
        for e in study.experiments:
            e.lrs = [float(v) for v in e.lrs]
            e.seeds = [int(s) for s in e.seeds] if e.seeds is not None else None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from None
    _check_overrides(study.base_overrides, f"{path}: base_overrides")
    names = set()
    for s in study.settings:
        if "name" not in s:
            raise ConfigError(f"{path}: a setting has no name")
        _check_overrides(s.get("overrides", {}), f"{path}: setting {s['name']!r}")
        names.add(s["name"])
    _check_experiments(study, names, path)
    if study.baseline not in names:
        raise ConfigError(f"{path}: baseline {study.baseline!r} is not a setting")
    return study


def _check_experiments(study: Study, names: set, path: str) -> None:
    """Each experiment names known settings, either learning rates or the experiment it takes
    them from (an earlier one), and known config keys."""
    seen = set()
    for e in study.experiments:
        where = f"{path}: experiment {e.name!r}"
        for s in e.settings + [e.baseline or study.baseline]:
            if s not in names:
                raise ConfigError(f"{where}: no setting named {s!r}")
        if bool(e.lrs) == bool(e.lr_from):
            raise ConfigError(f"{where}: give either lrs or lr_from")
        for ref in (e.lr_from, e.compare_to):
            if ref and ref not in seen:
                raise ConfigError(f"{where}: {ref!r} must be an earlier experiment")
        _check_overrides(e.overrides, where)
        for p in e.points:
            if "name" not in p:
                raise ConfigError(f"{where}: a point has no name")
            _check_overrides(p.get("overrides", {}), f"{where}: point {p['name']!r}")
        seen.add(e.name)


# --------------------------------------------------------------------------- runs
