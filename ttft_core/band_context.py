"""A task that needs bands a codec does not hold (NDVI over an RGB group and a NIR band coded
apart): the group's reconstruction is placed among the tile's other bands, whose values are
given, and the task is computed on the whole. Tuning and judging each group this way lets every
group be coded on its own (in parallel, tile by tile) while its loss is the cross-band task's."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import TTFTError
from .tasks import Task


def within_bands(task: Task, context: Tensor, channels: list[int]) -> Task:
    """``context``: every band of the tile, (B, H, W) in [0, 1]; ``channels``: where the coded
    group's bands sit among them (0-based)."""
    if context.dim() != 3 or max(channels) >= context.shape[0]:
        raise TTFTError(f"band context of shape {tuple(context.shape)} has no channel {max(channels)}")
    index = torch.tensor(channels)
    full = context[None]

    def place(x: Tensor) -> Tensor:
        x = x if x.dim() == 4 else x[None]
        if x.shape[-2:] != full.shape[-2:]:
            raise TTFTError(
                f"tile of shape {tuple(x.shape[-2:])} does not match its band context {tuple(full.shape[-2:])}"
            )
        # out of place, so gradients reach x; on x's device (a tile tuned on a GPU)
        return full.to(x.device).index_copy(1, index.to(x.device), x.to(full.dtype))

    def loss(x_hat: Tensor, x: Tensor) -> Tensor:
        return task.loss(place(x_hat), place(x))

    return Task(
        name=task.name,
        description=f"{task.description} (bands {channels} coded, the others given)",
        features=lambda x: task.features(place(x)),
        metric_name=task.metric_name,
        metric=lambda x_hat, x: task.metric(place(x_hat), place(x)),
        higher_is_better=task.higher_is_better,
        params=dict(task.params),
        feature_loss=loss,
    )
