"""Training: the robust optimizer of App. C.1, maximum-likelihood training (``ml.fit``) and FAB
(``fab.fab``, with ``hmc``, ``ais`` and ``buffer``), data parallel (``parallel``)."""

from .ml import PUBLISHED, fit, joint_nll, make_optimizer
from . import fab, parallel  # FAB training (fab.fab); data parallel: make_mesh, shard_batch, replicate
from .optim import (
    SkipClipState,
    mask_bad_examples,
    robust_adam,
    skip_and_clip_by_norm_window,
    warmup_cosine_schedule,
)

__all__ = [
    "PUBLISHED",
    "fab",
    "SkipClipState",
    "fit",
    "joint_nll",
    "make_optimizer",
    "parallel",
    "mask_bad_examples",
    "robust_adam",
    "skip_and_clip_by_norm_window",
    "warmup_cosine_schedule",
]
