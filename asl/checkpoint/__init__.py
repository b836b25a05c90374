"""Checkpoints: every format the package reads or writes, atomic writes, ``weights_only=True`` reads.

- :mod:`asl.checkpoint.io`: the inference checkpoint (``best.pth``) with the official keys
  ``model`` (state dict), ``num_classes`` and ``idx_to_class`` ({int: name}), so the official
  infer.py reads ours, plus ``model_name``, ``image_size``, ``mean``, ``std``, ``thresholds``
  (optional), ``config`` and ``epoch``; every read (:func:`load_checkpoint`, which refuses a pickle
  that needs anything beyond tensors and plain containers) and every write
  (:func:`save_checkpoint`); safetensors; what a file is, by its first bytes.
- :mod:`asl.checkpoint.official`: the official layouts (inplace_abn TResNet, the Open Images
  bottleneck head, both ML-Decoder layouts), converted on read, and init weights.
- :mod:`asl.checkpoint.resume`: the training state (``last.pth``), :class:`RunState`, the settings
  a resume may not change, RNG states and seeding.

Building a model from a checkpoint is :func:`asl.opening.model_from_checkpoint`'s.
"""

from .io import (
    check_stored_values,
    check_weights_file,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    sniff_weights,
    state_dict_of,
    with_thresholds,
)
from .official import (
    detect_official_tresnet,
    is_official_layout,
    load_init_checkpoint,
    ml_decoder_shape,
    normalize_state_dict,
    strip_prefixes,
)
from .resume import (
    RESUME_FIXED,
    RunState,
    check_resume,
    get_rng_state,
    load_resume_checkpoint,
    restore_training_state,
    seed_everything,
    set_rng_state,
    training_checkpoint,
)

__all__ = [
    "check_stored_values",
    "check_weights_file",
    "load_checkpoint",
    "make_checkpoint",
    "save_checkpoint",
    "sniff_weights",
    "state_dict_of",
    "with_thresholds",
    "detect_official_tresnet",
    "is_official_layout",
    "load_init_checkpoint",
    "ml_decoder_shape",
    "normalize_state_dict",
    "strip_prefixes",
    "RESUME_FIXED",
    "RunState",
    "check_resume",
    "get_rng_state",
    "load_resume_checkpoint",
    "restore_training_state",
    "seed_everything",
    "set_rng_state",
    "training_checkpoint",
]
