"""The official repositories' defaults and their model zoo, in one place: the input sizes of the
official checkpoints and zoo files, the thresholds of the official validate.py and infer.py, and
the model a run trains when none is named. Read by the schema's help texts and by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DEFAULT_MODEL = "resnet10t"  # training without a model name: small, learns the demo from scratch on a CPU


# the official checkpoints' (ML-Decoder's L and XL: tresnet_v2_l, tresnet_v2_xl)
OFFICIAL_IMAGE_SIZE = {"tresnet_m": 224, "tresnet_l": 448, "tresnet_xl": 448, "tresnet_v2_l": 448, "tresnet_v2_xl": 640}


DEFAULT_IMAGE_SIZE = 224  # other models


# The largest input side any command accepts: the zoo's largest is 640; past this one batch of
# one picture would take tens of GiB (100000 px: a MemoryError after every check had passed).
MAX_IMAGE_SIZE = 4096


OFFICIAL_THRE = 0.8  # validate.py: threshold of CP/CR/CF1/OP/OR/OF1


OFFICIAL_INFER_THRESHOLDS = {"ms_coco": 0.7, "coco": 0.7, "openimages": 0.995}  # infer.py by --dataset-type


OFFICIAL_VALIDATE = {"dataset": "coco", "data_root": ".", "batch_size": 16, "workers": 2}  # validate.py's flags


# The official model zoo's files and the input side their published mAP was measured at: the
# NUS-WIDE file at 240 (65.2; 64.0 at 448), the XL COCO file at 640 (its name says so).
ZOO_IMAGE_SIZE = {
    "ms_coco_trresnet_m_224_81.8": 224,
    "ms_coco_trresnet_l_448_86.6": 448,
    "ms_coco_tresnet_xl_640_88.4": 640,
    "pascal_voc_tresnet_xl_448_96.0": 448,
    "nus_wide_trresnet_l_448_65.2": 240,
    "open_imagesv6_trresnet_l_448": 448,
    # ML-Decoder's zoo
    "tresnet_m_coco_224_84_2": 224,
    "tresnet_l_coco__448_90_0": 448,
    "tresnet_xl_coco_640_91_4": 640,
    "tresnet_m_open_images_200_groups_86_8": 224,
    "tresnet_l_stanford_card_96.41": 384,
}


def zoo_image_size(path: Any) -> Optional[int]:
    """The size the model zoo measured an official file at, by its file name (None for others)."""
    return ZOO_IMAGE_SIZE.get(Path(str(path)).stem.lower()) if path else None


def default_image_size(model_name: Optional[str]) -> int:
    """The input side a model runs at when nothing says otherwise: the official checkpoints'
    size for TResNet (M 224, L/XL 448), the fixed size of a model that takes one size only (ViT),
    else 224."""
    arch = model_name.split(".", 1)[0] if model_name else model_name  # tresnet_m.miil_in21k: tresnet_m
    if arch in OFFICIAL_IMAGE_SIZE:
        return OFFICIAL_IMAGE_SIZE[arch]
    if model_name:
        try:
            import timm

            pcfg = timm.models.get_pretrained_cfg(model_name) if timm.is_model(model_name) else None
        except (ImportError, RuntimeError):  # RuntimeError: a tag timm does not know (checked later)
            pcfg = None
        if pcfg is not None and getattr(pcfg, "fixed_input_size", False):
            return int(pcfg.input_size[-1])
    return DEFAULT_IMAGE_SIZE
