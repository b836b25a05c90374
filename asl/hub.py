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
from typing import Optional
from urllib.parse import urlparse

from .errors import ConfigError

__all__ = ["resolve_hub_model", "offline", "hub_reachable", "hub_cache_dir", "cache_only", "HUB_PREFIX"]

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
