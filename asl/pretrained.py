"""Pretrained starts: timm's weights for a ``NAME[.TAG]``, found through the Hugging Face Hub cache.

``--pretrained`` means what it means in timm (``timm.create_model(name, pretrained=True)``): the
weights of the model's tag on the Hugging Face Hub, downloaded once (with huggingface_hub's own
progress bar) into the cache every HF tool shares (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``). Offline (``HF_HUB_OFFLINE=1``, or no network) a cached file is
used as it is; a missing one is one error line naming the two ways out. The file is resolved
before any data is read, so a run never reads its dataset only to fail on its start.

    from asl.pretrained import resolve_pretrained
    src = resolve_pretrained("tresnet_m.miil_in21k")   # PretrainedSource(tag=..., file=.../model.safetensors)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .hub import cache_only, hub_cache_dir, offline

__all__ = ["PretrainedSource", "resolve_pretrained", "hub_cache_dir"]

# What timm looks for in a model's hub repository, safest first (timm.models._hub).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class PretrainedSource:
    """Where a run's pretrained start comes from.

    Attributes:
        tag: the timm name with its tag (``tresnet_m.miil_in21k``).
        repo: the Hugging Face Hub repository (``timm/tresnet_m.miil_in21k``).
        file: the local file in the hub cache.
    """

    tag: str
    repo: str
    file: Path

    def describe(self) -> str:
        return f"timm {self.tag} (hf-hub:{self.repo}, {self.file})"


def _pretrained_cfg(name: str):
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ConfigError(f"--pretrained: unknown timm model {arch!r}")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    tags = timm.list_pretrained(f"{arch}.*")
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        known = (
            f"its tags: {', '.join(tags[:6])}{' ...' if len(tags) > 6 else ''}"
            if tags
            else f"timm has no pretrained weights for {arch}"
        )
        raise ConfigError(
            f"--pretrained: {name} names no pretrained weights timm knows ({known}); pass "
            f"--pretrained-path FILE for weights of your own, or --no-pretrained"
        )
    return cfg


def _check_cached(path: Path, tag: str, repo: str) -> None:
    """The cached file holds weights (the check ``--pretrained-path`` files get): an interrupted
    download or a damaged disk leaves random bytes, half a file, or a header that declares more
    than the file holds, and the user is told which cache entry to delete."""
    from .checkpoint import check_weights_file
    from .errors import CheckpointError

    try:
        check_weights_file(path)
    except CheckpointError as e:
        entry = next((p for p in path.parents if p.name.startswith("models--")), path)
        reason = str(e).replace(str(path), "").lstrip(": ")
        raise ConfigError(
            f"--pretrained {tag}: the cached file {path} is damaged ({reason}); an interrupted download "
            f"leaves this: delete its cache entry (rm -r {entry}, or huggingface-cli delete-cache) and run "
            f"again to download hf-hub:{repo} anew"
        ) from None


def resolve_pretrained(name: str) -> PretrainedSource:
    """The local file of timm's pretrained weights for ``name`` (``NAME`` or ``NAME.TAG``),
    downloaded into the Hugging Face Hub cache when it is not there yet.

    Raises:
        ConfigError: an unknown model or tag, a model timm has no weights for, or weights that
            are not cached while offline (the message names the tag and the two ways out).
    """
    cfg = _pretrained_cfg(name)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if not cfg.hf_hub_id:
        raise ConfigError(
            f"--pretrained: {tag}'s weights are not on the Hugging Face Hub (only at {cfg.url}); "
            f"download that file and pass it with --pretrained-path FILE"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
    cache = hub_cache_dir()
    local = cache_only()  # offline, or no network: the cache at once, not a minute of retries
    for filename in files:
        try:
            path = hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache, local_files_only=local)
            _check_cached(Path(path), tag, repo)
            return PretrainedSource(tag=tag, repo=repo, file=Path(path))
        except LocalEntryNotFoundError:
            continue  # not cached (offline), or no network: the next name, then the message below
        except EntryNotFoundError:
            continue  # the repository has no file of this name
        except (OSError, ValueError) as e:  # HTTP errors are OSErrors; a broken cache too
            raise ConfigError(
                f"--pretrained {tag}: cannot fetch hf-hub:{repo} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else ''}); pass --pretrained-path FILE "
                f"instead"
            ) from None
    where = cache or "the Hugging Face cache (~/.cache/huggingface/hub)"
    why = "offline (HF_HUB_OFFLINE=1)" if offline() else "the Hugging Face Hub could not be reached"
    raise ConfigError(
        f"--pretrained {tag}: its weights (hf-hub:{repo}) are not in {where} and {why}: run once "
        f"with network to download them, or pass the weights file with --pretrained-path FILE"
    )
