"""Stage 2, test-time fine-tuning: adapt the encoder's adapter and the decoder's singular values
to one tile, on the rate of its latents + the rate of the singular values it will send + lambda
times a task loss (with mixed quantisation: see ttft_loss). The best step is the one whose state
costs least as coded, and its adapter state is kept by copy, not by reference.

A run may start from the stage-1 adapter (the paper) or from a given state, a tuned neighbour's
(warm start). The noise that stands in for rounding comes from a generator seeded per tile
(``TTFTConfig.seed``, or a seed drawn from the global RNG), so a run equals the same tile's run
inside ``batched_ttft.finetune_batch``.

Beyond the paper, ``latent_steps`` then refine the tile's latents themselves at the best adapter
state (``refine_latents``); the tile is coded from those latents when they cost less."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from . import lora
from .errors import TTFTError
from .singular_values import coded_bits, estimated_bits
from .tile_codec import TileCodec, pad_tile
from .ttft_loss import StepBits, latents_forward, mixed_forward, tile_seeds

TaskLoss = Callable[[Tensor, Tensor], Tensor]  # (reconstruction, original) -> scalar
# where the latent refinement halves its learning rate: the paper's adapter schedule (steps 15, 25,
# 30 and 35 of 40) as fractions of the run
LATENT_MILESTONES = (0.375, 0.625, 0.75, 0.875)


@dataclass(frozen=True)
class TTFTConfig:
    steps: int = 40
    lr: float = 5e-3
    milestones: tuple[int, ...] = (15, 25, 30, 35)
    gamma: float = 0.5
    lmbda: float = 100.0
    # stop once this many steps in a row bring no new best loss (None: run every step)
    patience: int | None = None
    # tiles whose values span less than this (all nodata, air, a flat field) are not tuned
    flat_range: float = 1.0 / 255
    # noise seed of every tile's run (None: the global RNG, as torch.manual_seed leaves it)
    seed: int | None = None
    # also price the bare codec (every s of the adapter at zero) at the start, and start from it
    # when it codes the tile cheaper than the adapter does (an open-set adapter of an unrelated task)
    base_start: bool = True
    # beyond the paper: after the adapter steps, refine the tile's latents y themselves for this many
    # Adam steps, the adapter at its best state (0 here: the paper's method alone; the settings
    # that jobs use default to as many as ``steps``)
    latent_steps: int = 0
    latent_lr: float = 0.05


@dataclass
class TTFTResult:
    state: dict[str, Tensor]
    best_loss: float
    best_step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""  # why no step ran, when none did
    started_from: str = "adapter"  # or "base": the bare codec was the cheaper start
    # refined latents y of the padded tile, when refining them beat the adapter alone (pass them
    # to compress() with the state)
    latents: Tensor | None = None

    @property
    def steps_run(self) -> int:
        return len(self.losses)


def compress_tuned(codec: TileCodec, tile: Tensor, result: TTFTResult | None) -> bytes:
    """The tile's bytes as TTFT left it: its best adapter state and, when refined, its latents
    (``result`` None: the codec as it stands)."""
    if result is None:
        return codec.compress(tile)
    return codec.compress(tile, result.state, result.latents)


def pixel_mse(x_hat: Tensor, x: Tensor) -> Tensor:
    return F.mse_loss(x_hat, x)


def start_state(codec: TileCodec, init_state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The adapter state a run starts from: the stage-1 adapter, or ``init_state`` (warm start).

    A warm-start state must hold the stage-1 decoder P and Q: the decoder rebuilds them from the
    adapter it holds, as only the decoder's s travel in a tile."""
    if init_state is None:
        return codec.stage1_state
    missing = sorted(set(codec.stage1_state) - set(init_state))
    if missing:
        raise TTFTError(f"warm-start state lacks {len(missing)} adapter tensors, first {missing[0]!r}")
    fixed = {f"{name}.{p}" for name, _ in lora.lora_layers(codec.model, "decoder") for p in ("lora_P", "lora_Q")}
    for key, ref in codec.stage1_state.items():
        if init_state[key].shape != ref.shape:
            raise TTFTError(
                f"warm-start tensor {key!r} has shape {tuple(init_state[key].shape)}, the adapter {tuple(ref.shape)}"
            )
        if key in fixed and not torch.equal(init_state[key].to(ref.dtype), ref):
            raise TTFTError(f"warm-start state changes the decoder's {key!r}, which a tile never transmits")
    return {key: init_state[key].detach().to(ref.dtype).clone() for key, ref in codec.stage1_state.items()}


def finetune(codec: TileCodec, tile: Tensor, task_loss: TaskLoss = pixel_mse,
             config: TTFTConfig = TTFTConfig(), init_state: dict[str, Tensor] | None = None) -> TTFTResult:  # fmt: skip
    """Tune ``codec``'s adapter to ``tile`` (C, H, W); returns the state to pass to compress().

    ``init_state`` (optional) starts from that adapter state instead of the stage-1 one."""
    if codec.adapter_id is None:
        raise TTFTError("test-time fine-tuning needs a codec with an adapter attached")
    if config.steps < 1:
        raise TTFTError(f"TTFT needs at least one step, got {config.steps}")
    tile = codec.check_tile(tile)
    if float(tile.max() - tile.min()) < config.flat_range:
        return TTFTResult(state=codec.stage1_state, best_loss=math.nan, best_step=-1, skipped="flat tile")
    model = codec.model
    x = pad_tile(tile)
    decoder_s = [layer.lora_s for _, layer in lora.lora_layers(model, "decoder")]
    result = TTFTResult(state=codec.stage1_state, best_loss=math.inf, best_step=-1)
    start = time.perf_counter()
    first = start_state(codec, init_state)
    try:  # from here the model holds other adapter states: the finally puts the stage-1 one back
        if config.base_start and _bare_is_cheaper(codec, x, tile, first, decoder_s, task_loss, config):
            first, result.started_from = zeroed(first), "base"
        lora.load_adapter_state(model, first)
        lora.set_trainable(model, "ttft")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=config.lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
        gen = torch.Generator().manual_seed(tile_seeds(config.seed, 1)[0])
        for step in range(config.steps):
            bits, x_hat = mixed_forward(model, x, [gen])
            loss, coded = step_costs(codec, torch.cat(decoder_s), bits, 0, x_hat[0], tile, task_loss, config, gen)
            result.losses.append(coded)
            if coded < result.best_loss:
                result.best_loss, result.best_step = coded, step
                result.state = lora.adapter_state(model)  # a copy of the state that gave this cost
            elif config.patience is not None and step - result.best_step >= config.patience:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if config.latent_steps:
            lora.set_trainable(model, "frozen")
            lora.load_adapter_state(model, result.state)
            with torch.no_grad():
                y = model.g_a(x)
            refine_latents(codec, y, [tile], [torch.cat(decoder_s).detach()], [task_loss], config, [gen], [result])
    finally:
        lora.set_trainable(model, "frozen")
        lora.load_adapter_state(model, codec.stage1_state)
    result.seconds = time.perf_counter() - start
    return result


def latent_rates(config: TTFTConfig) -> list[float]:
    return [config.latent_lr * config.gamma ** sum(step >= f * config.latent_steps for f in LATENT_MILESTONES)
            for step in range(config.latent_steps)]  # fmt: skip


def refine_latents(codec: TileCodec, y: Tensor, tiles: list[Tensor], decoder_s: list[Tensor],
                   task_losses: list[TaskLoss], config: TTFTConfig, gens: list[torch.Generator],
                   results: list[TTFTResult]) -> None:  # fmt: skip
    """Beyond the paper: descend each tile's cost in its latents y themselves (as Campos et al. and
    Yang et al. refine latents), with the model at each tile's best adapter state.

    The encoder's adapter can only move y within what a rank-r update of g_a reaches; the latents
    are free, and the decoder reads them as they are. Rows of ``y`` are tiles, ``decoder_s[row]``
    and ``task_losses[row]`` their singular values and task loss. Each step's coded cost continues the tile's ``losses``; a step that
    beats the best so far keeps a copy of its latents in ``results[row].latents``."""
    y = y.detach().clone().requires_grad_()
    adam = torch.optim.Adam([y], lr=config.latent_lr)  # elementwise: one Adam on stacked rows = one per row
    for lr in latent_rates(config):
        adam.param_groups[0]["lr"] = lr
        bits, x_hat = latents_forward(codec.model, y, gens)
        losses = []
        for row, (tile, task_loss, result) in enumerate(zip(tiles, task_losses, results)):
            loss, coded = step_costs(codec, decoder_s[row], bits, row, x_hat[row], tile, task_loss, config, gens[row])
            losses.append(loss)
            result.losses.append(coded)
            if coded < result.best_loss:
                result.best_loss, result.best_step = coded, len(result.losses) - 1
                result.latents = y[row : row + 1].detach().clone()
        adam.zero_grad(set_to_none=True)
        sum(losses).backward()
        adam.step()


def _bare_is_cheaper(codec: TileCodec, x: Tensor, tile: Tensor, state: dict[str, Tensor], decoder_s: list[Tensor],
                     task_loss: TaskLoss, config: TTFTConfig) -> bool:  # fmt: skip
    """Whether the bare codec (``zeroed(state)``) codes the tile cheaper than ``state`` does."""
    costs = []
    for candidate in (state, zeroed(state)):
        lora.load_adapter_state(codec.model, candidate)
        costs += coded_costs(codec, x, [tile], [torch.cat(decoder_s)], [task_loss], config)
    return costs[1] < costs[0]


def zeroed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bare codec in an adapter's shape: every s at zero, so P and Q add nothing."""
    return {k: torch.zeros_like(v) if k.endswith(".lora_s") else v for k, v in state.items()}


@torch.no_grad()
def coded_costs(codec: TileCodec, x: Tensor, tiles: list[Tensor], decoder_s: list[Tensor],
                task_losses: list[TaskLoss], config: TTFTConfig) -> list[float]:  # fmt: skip
    """Each tile's cost as coded under the adapter state the model holds (rows of ``x``, padded)."""
    gens = [torch.Generator() for _ in tiles]  # the coded cost draws no noise: any generator will do
    bits, x_hat = mixed_forward(codec.model, x, gens)
    return [step_costs(codec, s, bits, row, x_hat[row], tile, task_loss, config, gens[row])[1]
            for row, (tile, s, task_loss) in enumerate(zip(tiles, decoder_s, task_losses))]  # fmt: skip


def step_costs(codec: TileCodec, s: Tensor, bits: StepBits, row: int, x_hat: Tensor, tile: Tensor,
               task_loss: TaskLoss, config: TTFTConfig, gen: torch.Generator) -> tuple[Tensor, float]:  # fmt: skip
    """One tile's (loss to descend, cost as coded) at this step; both per pixel, lambda-weighted task.

    ``x_hat`` is the tile's padded reconstruction and ``s`` its decoder singular values."""
    _, h, w = tile.shape
    task = config.lmbda * task_loss(x_hat[:, :h, :w], tile)
    s_trained = estimated_bits(s, codec.reference_s, codec.s_step, generator=gen)
    s_coded = coded_bits(s, codec.reference_s, codec.s_step)
    loss = (bits.trained[row] + s_trained) / (h * w) + task
    coded = (bits.coded[row] + s_coded) / (h * w) + task.detach()
    return loss, coded.item()
