"""Test-time fine-tuning of several same-shaped tiles at once: one forward and one backward pass
per step for the whole batch, each tile with its own adapter.

The adapter tensors that TTFT trains (every encoder P, s, Q and the decoder's s) are stacked along
a leading tile axis, and while a batch runs each SVD-LoRA layer of the codec is swapped for a
per-tile layer: the frozen base weight is applied to the whole batch at once, and tile b's
low-rank update P_b·diag(s_b)·Q_b·(alpha/r) to tile b only (a convolution with Q_b, then a
batched matrix product with P_b·diag(s_b)). As the base weight is frozen, no gradient for it is
formed, only for the rank-r factors. The loss is the sum of the tiles' own losses, so each tile's
gradient is that of its own loss; Adam is elementwise, so one Adam on the stacked tensors equals
one Adam per tile. Tiles that stop on a plateau leave the batch; each tile keeps its own best state.

torch.func.vmap over the codec was tried first: CompressAI's LowerBound autograd function (in GDN
and in the likelihood bound) has no vmap rule, so vmap refuses the model.

Every tile draws its quantisation noise from its own generator through the forward pass that
``finetune`` uses (ttft_loss.mixed_forward): with a seed, a tile's losses and state here equal
those of ``finetune`` on that tile alone, up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import lora
from .errors import TTFTError
from .tile_codec import TileCodec, pad_tile
from .ttft import (
    TaskLoss,
    TTFTConfig,
    TTFTResult,
    coded_costs,
    pixel_mse,
    refine_latents,
    start_state,
    step_costs,
    zeroed,
)
from .ttft_loss import mixed_forward, tile_seeds

# torch.optim.Adam's defaults, which finetune uses
BETAS = (0.9, 0.999)
EPS = 1e-8


def finetune_batch(codec: TileCodec, tiles: list[Tensor], task_loss: TaskLoss | list[TaskLoss] = pixel_mse,
                   config: TTFTConfig = TTFTConfig(),
                   init_states: list[dict[str, Tensor] | None] | None = None) -> list[TTFTResult]:  # fmt: skip
    """Tune one adapter per tile, all tiles (C, H, W) of one shape in one pass per step.

    ``task_loss`` is one for every tile, or one per tile (a cross-band task whose tiles each carry
    their own other bands).

    Returns one TTFTResult per tile, in order, each usable with ``codec.compress(tile, state)``.
    ``init_states`` (optional, one per tile, None for the stage-1 adapter) warm-start the tiles.
    Flat tiles are skipped as ``finetune`` skips them. A tile's ``seconds`` is its share of the
    batch's wall time."""
    if codec.adapter_id is None:
        raise TTFTError("test-time fine-tuning needs a codec with an adapter attached")
    if config.steps < 1:
        raise TTFTError(f"TTFT needs at least one step, got {config.steps}")
    tiles = [codec.check_tile(t) for t in tiles]
    shapes = sorted({tuple(t.shape) for t in tiles})
    if len(shapes) > 1:
        raise TTFTError(f"a TTFT batch needs tiles of one shape, got {', '.join(map(str, shapes))}")
    if init_states is not None and len(init_states) != len(tiles):
        raise TTFTError(f"got {len(init_states)} warm-start states for {len(tiles)} tiles")
    task_losses = list(task_loss) if isinstance(task_loss, (list, tuple)) else [task_loss] * len(tiles)
    if len(task_losses) != len(tiles):
        raise TTFTError(f"got {len(task_losses)} task losses for {len(tiles)} tiles")
    starts = [start_state(codec, s) for s in (init_states or [None] * len(tiles))]
    results = [
        TTFTResult(state=codec.stage1_state, best_loss=math.nan, best_step=-1, skipped="flat tile")
        if float(t.max() - t.min()) < config.flat_range
        else None
        for t in tiles
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        tuned = _tune(codec, [tiles[i] for i in todo], [starts[i] for i in todo], [task_losses[i] for i in todo], config)
        for i, result in zip(todo, tuned):
            results[i] = result
    return results


def learning_rates(config: TTFTConfig) -> Iterator[float]:
    """The learning rate of each step, as torch's MultiStepLR sets it (same float arithmetic)."""
    counts = Counter(config.milestones)
    lr = config.lr * config.gamma ** counts[0] if counts[0] else config.lr
    for step in range(config.steps):
        yield lr
        if counts[step + 1]:
            lr = lr * config.gamma ** counts[step + 1]


def _tune(codec: TileCodec, tiles: list[Tensor], starts: list[dict[str, Tensor]], task_losses: list[TaskLoss],
          config: TTFTConfig) -> list[TTFTResult]:  # fmt: skip
    model = codec.model
    trained = _trained_keys(model)
    decoder_s = [f"{name}.lora_s" for name, _ in lora.lora_layers(model, "decoder")]
    x = torch.cat([pad_tile(t) for t in tiles])
    started = time.perf_counter()
    from_base = [False] * len(tiles)
    if config.base_start:
        from_base = _bare_is_cheaper_each(codec, x, tiles, starts, task_losses, config, trained, decoder_s)
    starts = [zeroed(s) if base else s for s, base in zip(starts, from_base)]
    bank = {k: v.requires_grad_() if k in trained else v for k, v in _bank(codec, starts, trained).items()}
    adam = StackedAdam({k: bank[k] for k in trained})
    seeds = tile_seeds(config.seed, len(tiles))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    results = [TTFTResult(state=codec.stage1_state, best_loss=math.inf, best_step=-1) for _ in tiles]
    for result, base in zip(results, from_base):
        result.started_from = "base" if base else "adapter"
    live = list(range(len(tiles)))  # which tile each row of the batch is
    x_all, gens_all = x, list(gens)
    originals = _swap_in(model, bank)
    try:
        for step, lr in enumerate(learning_rates(config)):
            bits, x_hat = mixed_forward(model, x, gens)
            losses, keep = [], []
            for row, tile_index in enumerate(live):  # each tile's costs exactly as finetune forms them
                s = torch.cat([bank[k][row] for k in decoder_s])
                loss, coded = step_costs(codec, s, bits, row, x_hat[row], tiles[tile_index], task_losses[tile_index],
                                         config, gens[row])  # fmt: skip
                losses.append(loss)
                result = results[tile_index]
                result.losses.append(coded)
                if coded < result.best_loss:
                    result.best_loss, result.best_step = coded, step
                    result.state = _row_state(bank, row, trained)  # a copy, as in finetune
                elif config.patience is not None and step - result.best_step >= config.patience:
                    continue
                keep.append(row)
            if not keep:
                break
            sum(losses[row] for row in keep).backward()
            adam.step(lr)
            if len(keep) < len(live):  # tiles that stopped leave the batch
                adam.keep(keep)
                bank.update(adam.params)
                live, gens, x = [live[r] for r in keep], [gens[r] for r in keep], x[keep]
    finally:
        _swap_out(model, originals)  # the codec's own layers, still at the stage-1 adapter
    if config.latent_steps:
        _refine_latents_each(codec, x_all, tiles, task_losses, config, gens_all, results, trained, decoder_s)
    seconds = (time.perf_counter() - started) / len(tiles)
    for result in results:
        result.seconds = seconds
    return results


def _refine_latents_each(codec: TileCodec, x: Tensor, tiles: list[Tensor], task_losses: list[TaskLoss], config: TTFTConfig,
                         gens: list[torch.Generator], results: list[TTFTResult], trained: list[str],
                         decoder_s: list[str]) -> None:  # fmt: skip
    """Every tile's latents refined in one batch, each tile at its own best adapter state."""
    best = _bank(codec, [r.state for r in results], trained)
    originals = _swap_in(codec.model, best)
    try:
        with torch.no_grad():
            y = codec.model.g_a(x)
        rows = [torch.cat([best[k][row] for k in decoder_s]) for row in range(len(tiles))]
        refine_latents(codec, y, tiles, rows, task_losses, config, gens, results)
    finally:
        _swap_out(codec.model, originals)


def _bank(codec: TileCodec, states: list[dict[str, Tensor]], trained: list[str]) -> dict[str, Tensor]:
    """Trained tensors stacked per tile; the decoder's P and Q are the same for every tile
    (start_state checks it) and never move. Keys in the adapter's own order."""
    return {k: torch.stack([s[k] for s in states]) if k in trained else v for k, v in codec.stage1_state.items()}


def _bare_is_cheaper_each(codec: TileCodec, x: Tensor, tiles: list[Tensor], starts: list[dict[str, Tensor]],
                          task_losses: list[TaskLoss], config: TTFTConfig, trained: list[str],
                          decoder_s: list[str]) -> list[bool]:  # fmt: skip
    """For each tile, whether the bare codec codes it cheaper than its start state (as finetune decides)."""
    costs = []
    for states in (starts, [zeroed(s) for s in starts]):
        bank = _bank(codec, states, trained)
        originals = _swap_in(codec.model, bank)
        try:
            rows = [torch.cat([bank[k][row] for k in decoder_s]) for row in range(len(tiles))]
            costs.append(coded_costs(codec, x, tiles, rows, task_losses, config))
        finally:
            _swap_out(codec.model, originals)
    return [base < adapter for adapter, base in zip(*costs)]


def _row_state(bank: dict[str, Tensor], row: int, trained: list[str]) -> dict[str, Tensor]:
    """One tile's full adapter state, copied out of the bank."""
    return {k: (v[row] if k in trained else v).detach().clone() for k, v in bank.items()}


def _trained_keys(model: nn.Module) -> list[str]:
    """What TTFT trains, in the order of lora.set_trainable('ttft'), which says it."""
    opened = lora.set_trainable(model, "ttft")
    lora.set_trainable(model, "frozen")
    return opened


class StackedAdam:
    """torch.optim.Adam's update (defaults, no weight decay), on tensors stacked along a tile axis.

    Every operation is elementwise with scalars shared by all tiles, so row b follows exactly the
    path that a separate Adam on tile b's tensors would. ``keep`` drops rows of stopped tiles."""

    def __init__(self, params: dict[str, Tensor]):
        self.params = params
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.steps += 1
        beta1, beta2 = BETAS
        bias_correction1 = 1 - beta1 ** float(self.steps)
        bias_correction2_sqrt = (1 - beta2 ** float(self.steps)) ** 0.5
        for k, p in self.params.items():
            grad = p.grad
            self.exp_avg[k].lerp_(grad, 1 - beta1)
            self.exp_avg_sq[k].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq[k].sqrt() / bias_correction2_sqrt).add_(EPS)
            p.addcdiv_(self.exp_avg[k], denom, value=-(lr / bias_correction1))
            p.grad = None

    def keep(self, rows: list[int]) -> None:
        self.params = {k: p.detach()[rows].requires_grad_() for k, p in self.params.items()}
        self.exp_avg = {k: v[rows] for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v[rows] for k, v in self.exp_avg_sq.items()}


# ---- per-tile SVD-LoRA layers ----
class _PerTile(nn.Module):
    """Stands in for an SVDLoRA layer during a batch: reads its P, s, Q from the shared bank, each
    either stacked (a leading tile axis) or one tensor for every tile."""

    def __init__(self, layer: lora.SVDLoRA, name: str, bank: dict[str, Tensor]):
        super().__init__()
        self.base_layer = layer.base_layer
        self.scaling = layer.scaling
        self.rank = layer.rank
        self.key = name
        object.__setattr__(self, "bank", bank)  # not a submodule or buffer: a plain reference

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        b = self.bank
        return b[f"{self.key}.lora_P"], b[f"{self.key}.lora_s"], b[f"{self.key}.lora_Q"]

    def mix(self) -> Tensor:
        """P·diag(s)·(alpha/r): (rows, r), or (tiles, rows, r) when any factor is per tile."""
        P, s, _ = self.factors()
        return P * s.unsqueeze(-2) * self.scaling


class _PerTileConv2d(_PerTile):
    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer
        out = F.conv2d(x, b.weight, b.bias, b.stride, b.padding, b.dilation)
        Q = self.factors()[2].reshape(-1, self.rank, *b.weight.shape[1:])  # (1 or tiles, r, C_in, kh, kw)
        n = x.shape[0]
        if Q.shape[0] == 1:
            u = F.conv2d(x, Q[0], None, b.stride, b.padding, b.dilation)
        else:  # tile i's input meets tile i's Q only (one conv per tile: oneDNN's grouped conv with r
            # outputs per group measured several times slower)
            u = torch.cat([F.conv2d(x[i : i + 1], Q[i], None, b.stride, b.padding, b.dilation) for i in range(n)])
        u = u.reshape(n, self.rank, -1)
        return out + torch.matmul(self.mix(), u).reshape(out.shape)


class _PerTileConvTranspose2d(_PerTile):
    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer
        args = (b.stride, b.padding, b.output_padding)
        out = F.conv_transpose2d(x, b.weight, b.bias, *args, 1, b.dilation)
        # the update's rows are the input channels: mix them down to r, then transpose-convolve with Q
        n = x.shape[0]
        v = torch.matmul(self.mix().transpose(-1, -2), x.reshape(n, x.shape[1], -1)).reshape(n, self.rank, *x.shape[2:])
        Q = self.factors()[2].reshape(-1, self.rank, *b.weight.shape[1:])  # (1 or tiles, r, C_out, kh, kw)
        if Q.shape[0] == 1:
            delta = F.conv_transpose2d(v, Q[0], None, *args, 1, b.dilation)
        else:
            delta = torch.cat([F.conv_transpose2d(v[i : i + 1], Q[i], None, *args, 1, b.dilation) for i in range(n)])
        return out + delta.reshape(out.shape)


class _PerTileLinear(_PerTile):
    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer
        out = F.linear(x, b.weight, b.bias)
        P, s, Q = self.factors()
        n = max(P.shape[0] if P.dim() == 3 else 1, s.shape[0] if s.dim() == 2 else 1, Q.shape[0] if Q.dim() == 3 else 1)
        if x.shape[0] % n:
            raise TTFTError(f"layer {self.key}: a batch of {x.shape[0]} rows does not split into {n} tiles")
        # leading rows are tile-major (tile, then windows or tokens), as the backbones lay them out
        u = torch.matmul(x.reshape(n, -1, x.shape[-1]), Q.transpose(-1, -2))
        return out + torch.matmul(u, self.mix().transpose(-1, -2)).reshape(out.shape)


_PER_TILE = {
    lora.LoRAConv2d: _PerTileConv2d,
    lora.LoRAConvTranspose2d: _PerTileConvTranspose2d,
    lora.LoRALinear: _PerTileLinear,
}


def _swap_in(model: nn.Module, bank: dict[str, Tensor]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Put a per-tile layer in place of every SVD-LoRA layer; returns what to put back."""
    layers = list(lora.lora_layers(model))
    for name, layer in layers:  # checked before anything is swapped, so a refusal leaves the model whole
        if getattr(layer.base_layer, "groups", 1) != 1:
            raise TTFTError(f"batched TTFT adapts ungrouped layers only; {name} has groups={layer.base_layer.groups}")
    swapped = []
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _PER_TILE[type(layer)](layer, name, bank))
        swapped.append((parent, child, layer))
    return swapped


def _swap_out(model: nn.Module, swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, child, layer in swapped:
        setattr(parent, child, layer)
