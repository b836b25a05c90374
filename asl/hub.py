"""Models on the Hugging Face Hub: ``hf-hub:org/name`` ids, resolved into the Hugging Face cache.

``hf-hub:org/name`` (``@revision`` optional) names a model folder as ``export.py --format hf``
writes it (``config.json`` + ``model.safetensors``); it is downloaded once into the Hugging Face
cache (``HF_HOME``, ``HF_HUB_CACHE``) and read from there afterwards. Offline
(``HF_HUB_OFFLINE=1``), or when the Hub cannot be reached (one TCP connection tried, 2 s), only the
cache is read: a model that is not cached is one error line at once, never a minute of retries.
"""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import urlparse

from .errors import CheckpointError, ConfigError

__all__ = [
    "hf_folder",
    "checkpoint_of_hf_folder",
    "resolve_hub_model",
    "offline",
    "hub_reachable",
    "hub_cache_dir",
    "cache_only",
    "HUB_PREFIX",
]

HUB_PREFIX = "hf-hub:"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MODEL_FILES = ["config.json", "model.safetensors", "README.md"]


def hub_cache_dir() -> Optional[str]:
    """The hub cache as the environment names it now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set: the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether one TCP connection to the Hub's endpoint opens within ``timeout`` seconds (asked once
    per process): without a network, huggingface_hub would retry for much longer before failing."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def cache_only() -> bool:
    return offline() or not hub_reachable()


def check_repo_id(repo: str, what: str) -> None:
    """``ORG/NAME`` as the Hub spells repository ids, else one :class:`ConfigError` line."""
    if not _REPO.match(repo):
        raise ConfigError(f"{what} {repo}: not a Hub repository id (ORG/NAME)")


def resolve_hub_model(spec: str) -> Path:
    """The local folder of ``hf-hub:org/name[@revision]`` (downloaded into the cache when needed).

    Raises:
        ConfigError: an id of another form, a model that is neither cached nor reachable, a
            repository that does not exist or has no model files.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    repo, _, revision = spec[len(HUB_PREFIX) :].partition("@")
    if not _REPO.match(repo):
        raise ConfigError(f"{spec}: not a Hub model id (hf-hub:ORG/NAME, optionally @REVISION)")
    local = cache_only()
    try:
        folder = snapshot_download(
            repo,
            revision=revision or None,
            allow_patterns=MODEL_FILES,
            cache_dir=hub_cache_dir(),
            local_files_only=local,
        )
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1)" if offline() else "the Hugging Face Hub cannot be reached"
        raise ConfigError(
            f"{spec} is not in the Hugging Face cache and {why}: run once with network to download it, or pass "
            f"the folder export.py --format hf wrote (local-dir:DIR)"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{spec}: no such model on the Hub (or it is private: huggingface-cli login)") from None
    except (OSError, ValueError) as e:  # HTTP errors are OSErrors
        raise ConfigError(f"{spec}: cannot fetch it ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return Path(folder)


def hf_folder(path: str) -> Optional[Path]:
    """The Hugging Face model folder ``path`` names (``hf-hub:ORG/NAME``, resolved into the Hugging
    Face cache; ``local-dir:DIR``; or a folder holding ``config.json``), or None for a file."""
    spec = str(path)
    if spec.startswith("hf-hub:"):
        folder = resolve_hub_model(spec)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{spec}: not a timm model (no config.json; export.py --format hf writes one)")
        return folder
    folder = Path(spec[len("local-dir:") :]) if spec.startswith("local-dir:") else Path(spec)
    if spec.startswith("local-dir:") or folder.is_dir():
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a model folder (no config.json; export.py --format hf writes one)")
        return folder
    return None


def checkpoint_of_hf_folder(folder: Path) -> Dict[str, Any]:
    """A model folder timm's ``save_for_hf`` wrote (``export.py --format hf``), as a checkpoint dict:
    its weights, architecture, label names, input size, mean / std, and this package's fields."""
    import json

    from .checkpoint import load_checkpoint

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        arch, pre = config["architecture"], config.get("pretrained_cfg") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not a timm model config ({type(e).__name__}: {e})") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors beside its config.json")
    state = load_checkpoint(weights, require_model=False)
    state = state.get("model", state) if isinstance(state, dict) else state
    ours = config.get("asl") or {}
    names = config.get("label_names") or pre.get("label_names")
    size = (pre.get("input_size") or [None])[-1]
    ckpt: Dict[str, Any] = {
        "model": state,
        "model_name": arch,
        "num_classes": config.get("num_classes"),
        "image_size": size,
        "mean": pre.get("mean"),
        "std": pre.get("std"),
        "head": ours.get("head", "linear"),
        "task": ours.get("task"),
        "config": ours.get("config") if isinstance(ours.get("config"), dict) else None,
    }
    if isinstance(names, (list, tuple)):
        ckpt["idx_to_class"] = dict(enumerate(map(str, names)))
    if ours.get("thresholds"):
        ckpt["thresholds"] = ours["thresholds"]
    return ckpt
