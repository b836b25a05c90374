"""asl: multi-label image classification with the Asymmetric Loss (Ben-Baruch et al., ICCV 2021)."""

__version__ = "0.1.0"

# The PyTorch parts load on first use (PEP 562), so `asl.jax` works where only JAX is installed.
_LAZY = {
    "ASLOptions": "options",
    "AsymmetricLoss": "losses",
    "AsymmetricLossOptimized": "losses",
    "ASLSingleLabel": "losses",
    "AdaptiveAsymmetricLoss": "losses",
    "PartialAsymmetricLoss": "partial",
    "MLDecoder": "heads",
    "build_loss": "losses",
    "mAP": "metrics",
    "mAP_known": "metrics",
    "average_precision": "metrics",
    "multilabel_metrics": "metrics",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
