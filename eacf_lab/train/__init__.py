"""Training utilities: the robust optimizer of App. C.1 (more to come)."""

from .optim import (
    SkipClipState,
    mask_bad_examples,
    robust_adam,
    skip_and_clip_by_norm_window,
    warmup_cosine_schedule,
)

__all__ = [
    "SkipClipState",
    "mask_bad_examples",
    "robust_adam",
    "skip_and_clip_by_norm_window",
    "warmup_cosine_schedule",
]
