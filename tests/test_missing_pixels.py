"""The collar of a scene: a smooth fill in its place, and tasks that judge only valid pixels."""

import torch

from ttft_archive.ttft_core.missing_pixels import fill_missing, on_valid_pixels
from ttft_archive.ttft_core.tasks import get_task


def ramp_with_collar(height: int = 75, width: int = 93) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    x = torch.stack([0.3 + 0.4 * cols, 0.5 + 0.2 * rows])
    return x, rows + cols < 1.3


def test_a_fill_keeps_the_valid_pixels_and_stays_in_their_range():
    x, valid = ramp_with_collar()
    filled = fill_missing(torch.where(valid, x, torch.zeros(())), valid)
    assert torch.equal(filled[:, valid], x[:, valid])
    low, high = x[:, valid].amin(1), x[:, valid].amax(1)
    assert torch.all(filled.flatten(1).amin(1) >= low - 1e-6) and torch.all(filled.flatten(1).amax(1) <= high + 1e-6)
    # a continuation of the scene, not a step: each missing pixel close to the ramp it continues
    assert (filled - x)[:, ~valid].abs().mean() < 0.15


def test_a_channel_without_valid_pixels_is_filled_with_zero_and_a_full_tile_is_untouched():
    x = torch.rand(2, 5, 7)
    assert torch.equal(fill_missing(x, torch.zeros(5, 7, dtype=torch.bool)), torch.zeros(2, 5, 7))
    assert fill_missing(x, torch.ones(5, 7, dtype=torch.bool)) is x


def test_a_task_on_valid_pixels_ignores_the_collar_and_keeps_its_scale_elsewhere():
    x, valid = ramp_with_collar()
    task = on_valid_pixels(get_task("pixel"), valid)
    in_collar = torch.where(valid, x, torch.full_like(x, 0.9))
    assert task.loss(in_collar[None], x[None]).item() == 0 and task.metric(in_collar, x) == float("inf")
    off = x + 0.01
    expected = 0.01**2 * valid.float().mean().item()  # the error of the delivered tile, per pixel
    assert abs(task.loss(off[None], x[None]).item() - expected) < 1e-7
