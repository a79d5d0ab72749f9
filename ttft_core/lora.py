"""SVD-LoRA: a low-rank update W + P·diag(s)·Q·(alpha/r) around a frozen layer.

Each adapter layer wraps its ``base_layer`` and owns only P, s and Q, so adapter state can be saved,
swapped and sent on its own. ``s`` starts at zero, so a freshly injected model equals its base.
The weight is viewed as a matrix (rows = first weight dimension, columns = the rest); for
ConvTranspose2d that first dimension is the input channels, as PyTorch stores it.

While ``per_tile`` holds a model, its adapter layers take P, s and Q from a mapping instead of
their own parameters, stacked along a leading tile axis: row b of a batch meets tile b's update
only, as peft's mixed-adapter batches do. This is how test-time fine-tuning tunes one adapter per
tile in one forward and backward pass (torch.func.vmap over the codec was tried first: CompressAI's
LowerBound autograd function, in GDN and in the likelihood bound, has no vmap rule).
"""

from __future__ import annotations

import contextlib
import fnmatch
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import TTFTError

Side = Literal["encoder", "decoder"]
Stage = Literal["stage1", "ttft", "frozen"]


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 4
    alpha: float = 8.0
    seed: int = 0


class SVDLoRA(nn.Module):
    """Base class of the three wrappers: holds P, s, Q and the merge state."""

    def __init__(self, base_layer: nn.Module, config: LoRAConfig, side: Side, name: str = ""):
        super().__init__()
        if config.rank < 1:
            raise TTFTError(f"LoRA rank must be >= 1, got {config.rank}")
        self.base_layer = base_layer
        self.rank = config.rank
        self.scaling = config.alpha / config.rank
        self.side = side
        weight = base_layer.weight
        rows, cols = weight.shape[0], weight[0].numel()
        if config.rank > min(rows, cols):
            raise TTFTError(f"LoRA rank {config.rank} exceeds the {rows}x{cols} weight it adapts")
        # Orthonormal P columns and Q rows make s the singular values of the update (times alpha/r),
        # so one learning rate means the same on every layer whatever its fan-in. They are seeded by
        # the layer's name: an adapter started from zero is then the same on the encoding and the
        # decoding side, which matters for the decoder's P and Q that are never transmitted.
        gen = torch.Generator().manual_seed(zlib.crc32(f"{config.seed}:{name}".encode()))
        self.lora_P = nn.Parameter(_orthonormal(rows, config.rank, gen).to(weight.dtype))
        self.lora_s = nn.Parameter(torch.zeros(config.rank, dtype=weight.dtype))
        self.lora_Q = nn.Parameter(_orthonormal(cols, config.rank, gen).T.contiguous().to(weight.dtype))
        self.merged = False
        # set by per_tile: the mapping that holds each tile's factors, and this layer's name in it
        self.tile_factors: tuple[Mapping[str, Tensor], str] | None = None
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> Tensor:
        return self._delta(self.lora_P, self.lora_s, self.lora_Q)

    def _delta(self, P: Tensor, s: Tensor, Q: Tensor) -> Tensor:
        return ((P * s) @ Q * self.scaling).reshape(self.base_layer.weight.shape)

    def effective_weight(self) -> Tensor:
        if self.merged:
            return self.base_layer.weight
        return self.base_layer.weight + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, for inference at the base layer's speed."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"side={self.side}, rank={self.rank}, scaling={self.scaling}, merged={self.merged}"

    def forward(self, x: Tensor) -> Tensor:
        if self.tile_factors is None:
            return self.apply_weight(x, self.effective_weight())
        bank, name = self.tile_factors
        P, s, Q = bank[f"{name}.lora_P"], bank[f"{name}.lora_s"], bank[f"{name}.lora_Q"]
        tiles = max(
            P.shape[0] if P.dim() == 3 else 1, s.shape[0] if s.dim() == 2 else 1, Q.shape[0] if Q.dim() == 3 else 1
        )
        if tiles == 1:  # folded into the weight: cheaper, and the very arithmetic of the plain forward
            P, s, Q = (t[0] if t.dim() == d else t for t, d in ((P, 3), (s, 2), (Q, 3)))
            return self.apply_weight(x, self.base_layer.weight + self._delta(P, s, Q))
        return self.apply_weight(x, self.base_layer.weight) + self.tile_updates(x, tiles, P, s, Q)

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def tile_updates(self, x: Tensor, tiles: int, P: Tensor, s: Tensor, Q: Tensor) -> Tensor:
        """Each tile's low-rank update applied to its own rows of ``x``; every factor is stacked
        (a leading tile axis) or one for all tiles."""
        raise NotImplementedError

    def _mix(self, P: Tensor, s: Tensor) -> Tensor:
        """P·diag(s)·(alpha/r): (rows, r), or (tiles, rows, r) when a factor is per tile."""
        return P * s.unsqueeze(-2) * self.scaling


def _each_tile(op, x: Tensor, weight: Tensor, grouped: bool, **options) -> Tensor:
    """``op`` (a convolution) of tile i's rows of ``x`` with ``weight[i]``, for every tile: as one
    grouped convolution, or one convolution per tile. On the CPU oneDNN's grouped convolution with
    r outputs per group measured several times slower than the loop; a GPU wants few launches."""
    n = x.shape[0]
    if grouped:
        out = op(x.reshape(1, -1, *x.shape[2:]), weight.reshape(-1, *weight.shape[2:]), None, groups=n, **options)
        return out.reshape(n, -1, *out.shape[2:])
    return torch.cat([op(x[i : i + 1], weight[i], None, **options) for i in range(n)])


def _orthonormal(n: int, rank: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, rank, dtype=torch.float64, generator=gen))
    return q.float()


class LoRALinear(SVDLoRA):
    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.base_layer.bias)

    def tile_updates(self, x: Tensor, tiles: int, P: Tensor, s: Tensor, Q: Tensor) -> Tensor:
        if x.shape[0] % tiles:
            raise TTFTError(f"a batch of {x.shape[0]} rows does not split into {tiles} tiles")
        # leading rows are tile-major (tile, then windows or tokens), as the backbones lay them out
        u = torch.matmul(x.reshape(tiles, -1, x.shape[-1]), Q.transpose(-1, -2))
        return torch.matmul(u, self._mix(P, s).transpose(-1, -2)).reshape(*x.shape[:-1], P.shape[-2])


class LoRAConv2d(SVDLoRA):
    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        b = self.base_layer
        return F.conv2d(x, weight, b.bias, b.stride, b.padding, b.dilation, b.groups)

    def tile_updates(self, x: Tensor, tiles: int, P: Tensor, s: Tensor, Q: Tensor) -> Tensor:
        b = self.base_layer
        options = dict(stride=b.stride, padding=b.padding, dilation=b.dilation)
        Q = Q.reshape(-1, self.rank, *b.weight.shape[1:])  # (1 or tiles, r, C_in, kh, kw)
        if Q.shape[0] == 1:
            u = F.conv2d(x, Q[0], None, **options)
        else:
            u = _each_tile(F.conv2d, x, Q, x.is_cuda, **options)
        out = torch.matmul(self._mix(P, s), u.reshape(tiles, self.rank, -1))
        return out.reshape(tiles, -1, *u.shape[2:])


class LoRAConvTranspose2d(SVDLoRA):
    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        b = self.base_layer
        return F.conv_transpose2d(x, weight, b.bias, b.stride, b.padding, b.output_padding, b.groups, b.dilation)

    def tile_updates(self, x: Tensor, tiles: int, P: Tensor, s: Tensor, Q: Tensor) -> Tensor:
        b = self.base_layer
        options = dict(stride=b.stride, padding=b.padding, output_padding=b.output_padding, dilation=b.dilation)
        # the update's rows are the input channels: mix them down to r, then transpose-convolve with Q
        v = torch.matmul(self._mix(P, s).transpose(-1, -2), x.reshape(tiles, x.shape[1], -1))
        v = v.reshape(tiles, self.rank, *x.shape[2:])
        Q = Q.reshape(-1, self.rank, *b.weight.shape[1:])  # (1 or tiles, r, C_out, kh, kw)
        if Q.shape[0] == 1:
            return F.conv_transpose2d(v, Q[0], None, **options)
        return _each_tile(F.conv_transpose2d, v, Q, v.is_cuda, **options)


_WRAPPERS: dict[type[nn.Module], type[SVDLoRA]] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
    nn.ConvTranspose2d: LoRAConvTranspose2d,
}


def inject(model: nn.Module, patterns: Iterable[str], side: Side, config: LoRAConfig = LoRAConfig()) -> list[str]:
    """Wrap every Linear/Conv2d/ConvTranspose2d whose qualified name matches a glob pattern.

    Returns the wrapped names. Raises if nothing matched: a silent no-op would train nothing.
    """
    patterns = list(patterns)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in _WRAPPERS and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    if not targets:
        raise TTFTError(f"no layer matches the LoRA patterns {patterns}")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _WRAPPERS[type(module)](module, config, side, name))
    return [name for name, _ in targets]


def lora_layers(model: nn.Module, side: Side | None = None) -> Iterator[tuple[str, SVDLoRA]]:
    for name, module in model.named_modules():
        if isinstance(module, SVDLoRA) and (side is None or module.side == side):
            yield name, module


def stage_parameters(model: nn.Module, stage: Stage) -> list[str]:
    """The qualified names of the adapter parameters a stage trains, in module order.

    stage1: every P, s, Q on both sides. ttft: every encoder P, s, Q and the decoder's s only
    (the decoder's P and Q must stay equal to the stage-1 adapter both sides hold). frozen: none.
    """
    if stage not in ("stage1", "ttft", "frozen"):
        raise TTFTError(f"unknown training stage {stage!r}")
    return [
        f"{name}.{pname}"
        for name, layer in lora_layers(model)
        for pname in ("lora_P", "lora_s", "lora_Q")
        if stage == "stage1" or (stage == "ttft" and (layer.side == "encoder" or pname == "lora_s"))
    ]


def set_trainable(model: nn.Module, stage: Stage) -> list[str]:
    """Freeze everything, then open the adapter parameters the stage trains; returns their names."""
    opened = stage_parameters(model, stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in opened:
        model.get_parameter(name).requires_grad_(True)
    return opened


@contextlib.contextmanager
def per_tile(model: nn.Module, factors: Mapping[str, Tensor]) -> Iterator[None]:
    """While open, every adapter layer of ``model`` takes its P, s and Q from ``factors`` (keyed as
    ``adapter_state`` keys them) instead of its own parameters. Each factor is stacked along a
    leading tile axis, tile b's applied to row b of the batch, or is one tensor that every tile
    shares. ``factors`` is read at every forward pass, so its tensors may be replaced meanwhile (a
    batch that loses tiles). The layers' own parameters are neither read nor changed."""
    layers = list(lora_layers(model))
    for name, layer in layers:  # checked before any layer changes, so a refusal leaves the model as it was
        if getattr(layer.base_layer, "groups", 1) != 1:
            raise TTFTError(f"per-tile adapters need ungrouped layers; {name} has groups={layer.base_layer.groups}")
        if layer.merged:
            raise TTFTError(f"per-tile adapters need unmerged layers; {name} is merged")
    for name, layer in layers:
        layer.tile_factors = (factors, name)
    try:
        yield
    finally:
        for _, layer in layers:
            layer.tile_factors = None


def adapter_state(model: nn.Module, side: Side | None = None) -> dict[str, Tensor]:
    """The adapter parameters alone, keyed like the model's state dict."""
    return {
        f"{name}.{pname}": getattr(layer, pname).detach().clone()
        for name, layer in lora_layers(model, side)
        for pname in ("lora_P", "lora_s", "lora_Q")
    }


def load_adapter_state(model: nn.Module, state: dict[str, Tensor], side: Side | None = None) -> None:
    """Copy adapter tensors in; every adapter parameter of the chosen side must be present."""
    expected = adapter_state(model, side)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise TTFTError(f"adapter state lacks {len(missing)} tensors, first {missing[0]!r}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in expected:
            if params[key].shape != state[key].shape:
                raise TTFTError(
                    f"adapter tensor {key!r} has shape {tuple(state[key].shape)}, "
                    f"the model needs {tuple(params[key].shape)}"
                )
            params[key].copy_(state[key])


def decoder_singular_values(model: nn.Module) -> Tensor:
    """All decoder s vectors, concatenated in module order: what a TTFT bitstream carries."""
    values = [layer.lora_s.detach().reshape(-1) for _, layer in lora_layers(model, "decoder")]
    return torch.cat(values) if values else torch.zeros(0)


def set_decoder_singular_values(model: nn.Module, values: Tensor) -> None:
    layers = [layer for _, layer in lora_layers(model, "decoder")]
    total = sum(layer.rank for layer in layers)
    if values.numel() != total:
        raise TTFTError(f"got {values.numel()} decoder singular values, the adapter has {total}")
    offset = 0
    with torch.no_grad():
        for layer in layers:
            layer.lora_s.copy_(values[offset : offset + layer.rank])
            offset += layer.rank


def merge_all(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
