"""The study's one record file (``runs.jsonl``): runs keyed by the hash of their result fields."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import FIELDS, RESULT_FIELDS, Config, from_dict, load_config
from ..errors import ConfigError
from ..files import atomic_write

log = logging.getLogger(__name__)


def config_key(cfg: Config) -> str:
    """Hash of the fields that can change a run's result (``RESULT_FIELDS``: not where it writes,
    how often it logs or how many loader workers it uses)."""
    d = {k: getattr(cfg, k) for k in RESULT_FIELDS}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_key(record: Dict[str, Any]) -> str:
    """The key of a recorded run: its config, with today's defaults for fields added since."""
    known = {k: v for k, v in record["config"].items() if k in FIELDS}
    return config_key(from_dict(known, source="run record"))


class RunStore:
    """A study's finished runs: ``runs.jsonl``, one JSON object per run, in the order they finished::

        {"config": {the RESULT_FIELDS values}, "epochs": [the metrics.jsonl records],
         "per_class_ap": {"epoch": ..., "ap": [...], "ap_ema": [...] or null}}

    Records are looked up by :func:`record_key`, computed from the config when the file is read
    (no key is stored), so a field added to the config since a run was recorded (with its
    default) does not orphan it. Adding
    rewrites the file atomically; parallel jobs (threads) add under a lock.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: Optional[Dict[str, Dict[str, Any]]] = None

    def _load(self) -> Dict[str, Dict[str, Any]]:
        if self._records is None:
            recs = {}
            if self.path.exists():
                for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            raise ConfigError(f"{self.path}:{n}: not a JSON record") from None
                        recs[record_key(rec)] = rec
            self._records = recs
        return self._records

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self._load().get(key)

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self):
        return iter(list(self._load().values()))

    def add(self, cfg: Config, epochs: List[Dict[str, Any]], per_class_ap: Optional[Dict[str, Any]]) -> str:
        """Record a finished run; returns its key."""
        key = config_key(cfg)
        rec = {"config": {k: getattr(cfg, k) for k in RESULT_FIELDS}, "epochs": epochs, "per_class_ap": per_class_ap}
        with self._lock:
            recs = self._load()
            recs[key] = rec
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs.values()))
        return key


def read_run_folder(folder: Path) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """(per-epoch records, per-class AP without the class names) of a training run's folder."""
    f = folder / "metrics.jsonl"
    epochs = (
        [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()] if f.exists() else []
    )
    ap = None
    if (folder / "per_class_ap.json").exists():
        ap = json.loads((folder / "per_class_ap.json").read_text(encoding="utf-8"))
        ap.pop("class_names", None)  # the dataset's, in its order: the same for every run of a dataset
    return epochs, ap


def import_run_folders(folder: Path, store: RunStore) -> Tuple[int, int]:
    """Record the finished runs of an older study layout (``runs/<hash>/`` folders, each with its
    ``study_config.yaml``, ``metrics.jsonl`` and ``per_class_ap.json``) in ``store``; nothing in
    ``folder`` is changed. Returns (runs recorded, unfinished runs left out)."""
    added = skipped = 0
    for d in sorted(p for p in Path(folder).iterdir() if (p / "study_config.yaml").is_file()):
        cfg = load_config(str(d / "study_config.yaml"))
        epochs, ap = read_run_folder(d)
        if len(epochs) < min(cfg.stop_epoch or cfg.epochs, cfg.epochs):
            skipped += 1
            continue
        store.add(cfg, epochs, ap)
        added += 1
    return added, skipped
