"""Tiles with missing pixels (a scene's nodata collar): what the codec codes in their place, and a
task that judges only the pixels a decoder gives back.

A decoder writes the nodata value back wherever the source held it (the archive keeps each
tile's mask), so the codec's values there are never seen. Coded as stored, the collar costs
bytes twice: the sharp step from the fill value to the scene, and, in a value window, a window
stretched down to the fill value. ``fill_missing`` puts a smooth continuation of the valid
pixels there instead (pull-push: averages of the valid pixels over ever coarser blocks, blended
back down), inside the valid pixels' range, so a tile's window is theirs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .tasks import Task


def fill_missing(x: Tensor, valid: Tensor) -> Tensor:
    """(C, H, W) ``x`` with its pixels where ``valid`` (bool, (C, H, W) or (H, W)) is False
    replaced by a smooth fill from the valid ones of the same channel; valid pixels unchanged. A
    channel with no valid pixel is filled with 0."""
    weight = valid.expand_as(x).to(x.dtype)
    if bool(weight.all()):
        return x
    # pull: sums of values and of valid counts over blocks of 2^k pixels a side
    sums, counts = [x * weight], [weight]
    while max(sums[-1].shape[-2:]) > 1:
        sums.append(_sum_pool(sums[-1]))
        counts.append(_sum_pool(counts[-1]))
    value = sums[-1] / counts[-1].clamp_min(1)
    # push: each level's block mean where it has valid pixels, the coarser level's value for the
    # share of the block that has none
    for level in range(len(sums) - 2, -1, -1):
        block = float(4**level)
        coarser = F.interpolate(value[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
        coarser = coarser[:, : sums[level].shape[1], : sums[level].shape[2]]
        value = (sums[level] + (block - counts[level]) * coarser) / block
    return torch.where(weight.bool(), x, value)


def _sum_pool(a: Tensor) -> Tensor:
    """Sums over 2x2 blocks, an odd side padded with zeros (no value, no count)."""
    a = F.pad(a, (0, a.shape[-1] % 2, 0, a.shape[-2] % 2))
    return 4 * F.avg_pool2d(a[None], 2)[0]


def on_valid_pixels(task: Task, valid: Tensor) -> Task:
    """``task`` on a tile whose pixels where ``valid`` is False are given back exactly (as
    nodata): the reconstruction is taken as the original there, so neither the tuning's loss nor
    the metric sees them, and both keep the task's per-pixel scale over the whole tile (the rate
    is counted over the whole tile too)."""

    def delivered(x_hat: Tensor, x: Tensor) -> Tensor:
        return torch.where(valid.to(x_hat.device), x_hat, x.to(x_hat.dtype))

    def loss(x_hat: Tensor, x: Tensor) -> Tensor:
        return task.loss(delivered(x_hat, x), x)

    return Task(
        name=task.name,
        description=f"{task.description} (valid pixels)",
        features=task.features,
        metric_name=task.metric_name,
        metric=lambda x_hat, x: task.metric(delivered(x_hat, x), x),
        higher_is_better=task.higher_is_better,
        params=dict(task.params),
        feature_loss=loss,
        pooled=task.pooled,
        lambda_scale=task.lambda_scale,
    )
