"""asl: multi-label image classification with the Asymmetric Loss (Ben-Baruch et al., ICCV 2021)."""

__version__ = "0.1.0"

from .losses import AdaptiveAsymmetricLoss, ASLSingleLabel, AsymmetricLoss, AsymmetricLossOptimized, build_loss  # noqa: E402
from .metrics import average_precision, mAP, mAP_known, multilabel_metrics  # noqa: E402

__all__ = [
    "AsymmetricLoss",
    "AsymmetricLossOptimized",
    "ASLSingleLabel",
    "AdaptiveAsymmetricLoss",
    "build_loss",
    "mAP",
    "mAP_known",
    "average_precision",
    "multilabel_metrics",
    "__version__",
]
