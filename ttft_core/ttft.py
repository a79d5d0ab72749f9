"""Stage 2, test-time fine-tuning: adapt the encoder's adapter and the decoder's singular values
to each tile, on the rate of its latents + the rate of the singular values it will send + lambda
times a task loss (with mixed quantisation: see ttft_loss). The best step is the one whose state
costs least as coded.

One engine tunes a batch of tiles of one shape: one forward and one backward pass per step, each
tile with its own adapter (``lora.per_tile``); a single tile is a batch of one (``finetune``).
The loss is the sum of the tiles' own losses, so each tile's gradient is that of its own loss,
and Adam is elementwise, so one Adam on the stacked tensors is one Adam per tile. The base
weights are frozen: no gradient is formed for them. A tile that stops on a plateau leaves the
batch; each tile keeps its own best state.

A run may start from the stage-1 adapter (the paper), from a given state, a tuned neighbour's
(warm start), or from the bare codec when that codes the tile cheaper. The noise that stands in
for rounding comes from a generator seeded per tile (``TTFTConfig.seed``, or a seed drawn from the
global RNG) and is drawn on the CPU, so a tile's run alone equals its run inside a batch, up to
float rounding (a batch of one folds each update into its layer's weight, a larger batch applies
the factors tile by tile, and sums are ordered differently).

Beyond the paper, ``latent_steps`` then refine the tiles' latents themselves at their best adapter
states (``refine_latents``); a tile is coded from those latents when they cost less.

Devices: ``TTFTConfig.device`` says where the model (on a GPU, a copy kept by the codec), the
adapters and the steps run. The results come back to the CPU, where ``TileCodec.compress`` codes
them exactly as any other tile, so bytes tuned on any device decode bit-exactly on every CPU. Not
guaranteed: that a tile tuned on a GPU gives the bytes it gives on a CPU. Float arithmetic differs
between devices (and between GPU models and kernels), so the tuned state differs in its last bits
and may then round to other symbols; the cost it reaches is the same to float rounding.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

from . import lora
from .errors import TTFTError
from .singular_values import coded_bits, estimated_bits
from .stacked_adam import StackedAdam
from .tile_codec import TileCodec, pad_tile
from .training import DEFAULT_LAMBDA, task_weight
from .ttft_loss import StepBits, latents_forward, mixed_forward, tile_seeds
from .value_window import ValueWindow

TaskLoss = Callable[[Tensor, Tensor], Tensor]  # (reconstruction, original) -> scalar
# where the latent refinement halves its learning rate: the paper's adapter schedule (steps 15, 25,
# 30 and 35 of 40) as fractions of the run
LATENT_MILESTONES = (0.375, 0.625, 0.75, 0.875)
# the annealing temperature of SGA latent steps, falling geometrically from the first to the last
SGA_TEMPERATURES = (0.5, 0.05)
LATENT_ROUNDINGS = ("ste", "sga")


@dataclass(frozen=True)
class TTFTConfig:
    steps: int = 40
    lr: float = 5e-3
    milestones: tuple[int, ...] = (15, 25, 30, 35)
    gamma: float = 0.5
    lmbda: float = task_weight(DEFAULT_LAMBDA)  # jobs weigh by the codec's own trade-off (TTFTSettings)
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
    # how the latent steps round y: "ste" (mixed quantisation, as the adapter steps) or "sga"
    # (stochastic Gumbel annealing, its temperature falling over the run: SGA_TEMPERATURES)
    latent_rounding: str = "ste"
    # where the tuning runs: "cpu", "cuda", "cuda:N" or a torch.device; the tiles are coded on the
    # CPU whichever it is, so every CPU decodes them (see the module's notes on what may differ)
    device: str | torch.device = "cpu"


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


def compress_tuned(
    codec: TileCodec, tile: Tensor, result: TTFTResult | None, window: ValueWindow | None = None
) -> bytes:
    """The tile's bytes as TTFT left it: its best adapter state and, when refined, its latents
    (``result`` None: the codec as it stands), in ``window`` (the one it was tuned in). Coded on
    the CPU, wherever the tuning ran."""
    if result is None:
        return codec.compress(tile, window=window)
    return codec.compress(tile, result.state, result.latents, window)


def pixel_mse(x_hat: Tensor, x: Tensor) -> Tensor:
    return F.mse_loss(x_hat, x)


def tuning_device(device: str | torch.device) -> torch.device:
    """``device`` as torch names it, refused here (not deep inside a forward pass) when this
    machine has no such device."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise TTFTError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TTFTError(f"TTFT runs on cpu or cuda, not on {device}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = torch.cuda.current_device() if device.index is None and count else device.index or 0
    if index >= count:
        raise TTFTError(f"device {device} asked for, but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


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


def zeroed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bare codec in an adapter's shape: every s at zero, so P and Q add nothing."""
    return {k: torch.zeros_like(v) if k.endswith(".lora_s") else v for k, v in state.items()}


def learning_rates(config: TTFTConfig) -> Iterator[float]:
    """The learning rate of each adapter step, as torch's MultiStepLR sets it (same float arithmetic)."""
    counts = Counter(config.milestones)
    lr = config.lr * config.gamma ** counts[0] if counts[0] else config.lr
    for step in range(config.steps):
        yield lr
        if counts[step + 1]:
            lr = lr * config.gamma ** counts[step + 1]


def latent_rates(config: TTFTConfig) -> list[float]:
    return [
        config.latent_lr * config.gamma ** sum(step >= f * config.latent_steps for f in LATENT_MILESTONES)
        for step in range(config.latent_steps)
    ]


def latent_temperatures(config: TTFTConfig) -> list[float | None]:
    """Each latent step's SGA temperature (None: the straight-through rounding of "ste")."""
    if config.latent_rounding == "ste":
        return [None] * config.latent_steps
    first, last = SGA_TEMPERATURES
    span = max(config.latent_steps - 1, 1)
    return [first * (last / first) ** (step / span) for step in range(config.latent_steps)]


def finetune(
    codec: TileCodec,
    tile: Tensor,
    task_loss: TaskLoss = pixel_mse,
    config: TTFTConfig = TTFTConfig(),
    init_state: dict[str, Tensor] | None = None,
) -> TTFTResult:
    """Tune ``codec``'s adapter to ``tile`` (C, H, W), a batch of one; returns the result to pass
    to ``compress_tuned``. ``init_state`` (optional) starts from that adapter state instead of the
    stage-1 one."""
    return finetune_batch(codec, [tile], task_loss, config, [init_state])[0]


def finetune_batch(
    codec: TileCodec,
    tiles: list[Tensor],
    task_loss: TaskLoss | list[TaskLoss] = pixel_mse,
    config: TTFTConfig = TTFTConfig(),
    init_states: list[dict[str, Tensor] | None] | None = None,
) -> list[TTFTResult]:
    """Tune one adapter per tile, all tiles (C, H, W) of one shape in one pass per step.

    ``task_loss`` is one for every tile, or one per tile (a cross-band task whose tiles each carry
    their own other bands). ``init_states`` (optional, one per tile, None for the stage-1 adapter)
    warm-start the tiles. Flat tiles are not tuned. Returns one TTFTResult per tile, in order, its
    tensors on the CPU. A tile's ``seconds`` is its share of the batch's wall time."""
    if codec.adapter_id is None:
        raise TTFTError("test-time fine-tuning needs a codec with an adapter attached")
    if config.steps < 1:
        raise TTFTError(f"TTFT needs at least one step, got {config.steps}")
    if config.latent_rounding not in LATENT_ROUNDINGS:
        raise TTFTError(f"unknown latent rounding {config.latent_rounding!r}: expected one of {LATENT_ROUNDINGS}")
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
        tuned = _tune(
            codec, [tiles[i] for i in todo], [starts[i] for i in todo], [task_losses[i] for i in todo], config
        )
        for i, result in zip(todo, tuned):
            results[i] = result
    return results


def _tune(
    codec: TileCodec,
    tiles: list[Tensor],
    starts: list[dict[str, Tensor]],
    task_losses: list[TaskLoss],
    config: TTFTConfig,
) -> list[TTFTResult]:
    started = time.perf_counter()
    batch = _Batch(codec, tiles, task_losses, config)
    from_base = batch.bare_is_cheaper(starts) if config.base_start else [False] * len(tiles)
    starts = [zeroed(s) if base else s for s, base in zip(starts, from_base)]
    results = [
        TTFTResult(
            state=codec.stage1_state, best_loss=math.inf, best_step=-1, started_from="base" if base else "adapter"
        )
        for base in from_base
    ]
    gens = [torch.Generator().manual_seed(s) for s in tile_seeds(config.seed, len(tiles))]
    best = adapter_steps(batch, starts, gens, results)
    tuned = [r.best_step >= 0 for r in results]
    latents = refine_latents(batch, best, gens, results) if config.latent_steps else None
    best = {k: v.cpu() for k, v in best.items()}  # one copy per tensor, not one per tile
    seconds = (time.perf_counter() - started) / len(tiles)
    for i, result in enumerate(results):
        if tuned[i]:
            result.state = {k: (best[k][i] if k in best else v).clone() for k, v in codec.stage1_state.items()}
        if latents is not None and latents[i] is not None:
            result.latents = latents[i]
        result.seconds = seconds
    return results


class _Batch:
    """Tiles of one shape on the tuning device, and how to price them: the model there (the
    codec's own on the CPU, a copy elsewhere), their padded pixels, task losses and references."""

    def __init__(self, codec: TileCodec, tiles: list[Tensor], task_losses: list[TaskLoss], config: TTFTConfig):
        device = tuning_device(config.device)
        self.model = codec.tuning_model(device)
        # gradients for the factors in the bank only, none formed for the codec's own weights
        lora.set_trainable(self.model, "frozen")
        self.config = config
        self.s_step = codec.s_step
        self.reference_s = codec.reference_s.to(device)
        self.stage1 = {k: v.to(device) for k, v in codec.stage1_state.items()}
        self.trained = lora.stage_parameters(self.model, "ttft")
        self.decoder_s = [f"{name}.lora_s" for name, _ in lora.lora_layers(self.model, "decoder")]
        self.tiles = [t.to(device) for t in tiles]
        self.x = torch.cat([pad_tile(t) for t in self.tiles])
        self.task_losses = task_losses

    def bank(self, states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """What TTFT trains, stacked per tile; the decoder's P and Q once, as they are the same for
        every tile (start_state checks it) and never move. Keys in the adapter's own order."""
        trained = set(self.trained)
        return {k: _stacked([s[k] for s in states], v) if k in trained else v for k, v in self.stage1.items()}

    def costs(
        self, bank: dict[str, Tensor], bits: StepBits, x_hat: Tensor, tiles: list[int], gens: list[torch.Generator]
    ) -> tuple[list[Tensor], list[float]]:
        """Per row (tile ``tiles[row]``): the loss to descend and the cost as coded, both per pixel
        with the lambda-weighted task. The coded costs reach the host in one transfer."""
        losses, coded = [], []
        for row, i in enumerate(tiles):
            tile = self.tiles[i]
            _, h, w = tile.shape
            s = torch.cat([bank[k][row] for k in self.decoder_s])
            task = self.config.lmbda * self.task_losses[i](x_hat[row][:, :h, :w], tile)
            if bits.coded_x_hat is None:
                coded_task = task.detach()
            else:
                with torch.no_grad():
                    coded_task = self.config.lmbda * self.task_losses[i](bits.coded_x_hat[row][:, :h, :w], tile)
            s_trained = estimated_bits(s, self.reference_s, self.s_step, generator=gens[row])
            s_coded = coded_bits(s, self.reference_s, self.s_step)
            losses.append((bits.trained[row] + s_trained) / (h * w) + task)
            coded.append((bits.coded[row] + s_coded) / (h * w) + coded_task)
        return losses, torch.stack(coded).tolist()

    @torch.no_grad()
    def bare_is_cheaper(self, starts: list[dict[str, Tensor]]) -> list[bool]:
        """For each tile, whether the bare codec (``zeroed``) codes it cheaper than its start state."""
        gens = [torch.Generator() for _ in self.tiles]  # the coded cost draws no noise: any generator will do
        rows = list(range(len(self.tiles)))
        costs = []
        for states in (starts, [zeroed(s) for s in starts]):
            bank = self.bank(states)
            with lora.per_tile(self.model, bank):
                bits, x_hat = mixed_forward(self.model, self.x, gens)
                costs.append(self.costs(bank, bits, x_hat, rows, gens)[1])
        return [base < adapter for adapter, base in zip(*costs)]


def adapter_steps(
    batch: _Batch, starts: list[dict[str, Tensor]], gens: list[torch.Generator], results: list[TTFTResult]
) -> dict[str, Tensor]:
    """The paper's steps on every tile's adapter; returns each tile's best state of what TTFT
    trains, stacked per tile (a tile that never beat infinity keeps the stage-1 values)."""
    config = batch.config
    bank = batch.bank(starts)
    for k in batch.trained:
        bank[k].requires_grad_()
    stage1 = batch.bank([batch.stage1] * len(starts))
    best = {k: stage1[k] for k in batch.trained}
    adam = StackedAdam({k: bank[k] for k in batch.trained})
    live, x, gens = list(range(len(starts))), batch.x, list(gens)  # row r of the batch is tile live[r]
    with lora.per_tile(batch.model, bank):
        for step, lr in enumerate(learning_rates(config)):
            bits, x_hat = mixed_forward(batch.model, x, gens)
            losses, coded = batch.costs(bank, bits, x_hat, live, gens)
            improved = _record(results, live, coded)
            _copy_rows(best, bank, [live[r] for r in improved], improved)
            keep = [
                r
                for r, i in enumerate(live)
                if r in improved or config.patience is None or step - results[i].best_step < config.patience
            ]
            if not keep:
                break
            sum(losses[r] for r in keep).backward()
            adam.step(lr)
            if len(keep) < len(live):  # tiles that stopped leave the batch
                adam.keep(keep)
                bank.update(adam.params)
                live, gens, x = [live[r] for r in keep], [gens[r] for r in keep], x[keep]
    return best


# Latents that round to the symbols the best already codes cost that best again, up to the last
# float digits, which differ between a batch and a tile alone (sums in another order): such a step
# is a tie, not a refinement. Any symbol that moves changes the cost by far more than this share.
LATENT_TIE = 1e-5


def refine_latents(
    batch: _Batch, best: dict[str, Tensor], gens: list[torch.Generator], results: list[TTFTResult]
) -> list[Tensor | None]:
    """Beyond the paper: descend each tile's cost in its latents y themselves (as Campos et al. and
    Yang et al. refine latents), with the model at each tile's best adapter state ``best``.

    The encoder's adapter can only move y within what a rank-r update of g_a reaches; the latents
    are free, and the decoder reads them as they are. Each step's coded cost continues the tile's
    ``losses``. Returns per tile its best latents (1, M, h, w) on the CPU, or None where no latent
    step beat the adapter's best."""
    bank = {k: best.get(k, v) for k, v in batch.stage1.items()}
    rows = list(range(len(batch.tiles)))
    with lora.per_tile(batch.model, bank):
        with torch.no_grad():
            y = batch.model.g_a(batch.x)
        y.requires_grad_()
        kept, refined = y.detach().clone(), set()
        adam = StackedAdam({"y": y})
        for lr, temperature in zip(latent_rates(batch.config), latent_temperatures(batch.config)):
            bits, x_hat = latents_forward(batch.model, y, gens, temperature)
            losses, coded = batch.costs(bank, bits, x_hat, rows, gens)
            improved = _record(results, rows, coded, tie=LATENT_TIE)
            _copy_rows({"y": kept}, {"y": y}, improved, improved)
            refined.update(improved)
            sum(losses).backward()
            adam.step(lr)
    kept = kept.cpu()
    return [kept[i : i + 1].clone() if i in refined else None for i in rows]


def _stacked(tensors: list[Tensor], like: Tensor) -> Tensor:
    """``tensors`` stacked along a new leading axis on ``like``'s device, each row in ``like``'s
    memory layout (P, from a QR, is column-major): the layer's own arithmetic, and so its rounding,
    is then what a batch of one folds into the weight."""
    out = torch.empty_strided(
        (len(tensors), *like.shape), (like.numel(), *like.stride()), dtype=like.dtype, device=like.device
    )
    for row, t in zip(out, tensors):
        row.copy_(t)
    return out


def _record(results: list[TTFTResult], tiles: list[int], coded: list[float], tie: float = 0.0) -> list[int]:
    """Append each row's coded cost to its tile's losses; returns the rows that beat their tile's
    best so far by more than the relative ``tie``, which each become the tile's best."""
    improved = []
    for row, (i, cost) in enumerate(zip(tiles, coded)):
        result = results[i]
        result.losses.append(cost)
        margin = tie * abs(result.best_loss) if math.isfinite(result.best_loss) else 0.0
        if cost < result.best_loss - margin:
            result.best_loss, result.best_step = cost, len(result.losses) - 1
            improved.append(row)
    return improved


@torch.no_grad()
def _copy_rows(into: dict[str, Tensor], source: dict[str, Tensor], to: list[int], rows: list[int]) -> None:
    """``into[k][to[j]] = source[k][rows[j]]`` for every key of ``into``: a copy, on the device."""
    if rows:
        for k, kept in into.items():
            kept[to] = source[k][rows].detach()
