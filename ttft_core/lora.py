"""SVD-LoRA: a low-rank update W + P·diag(s)·Q·(alpha/r) around a frozen layer.

Each adapter layer wraps its ``base_layer`` and owns only P, s and Q, so adapter state can be saved,
swapped and sent on its own. ``s`` starts at zero, so a freshly injected model equals its base.
The weight is viewed as a matrix (rows = first weight dimension, columns = the rest); for
ConvTranspose2d that first dimension is the input channels, as PyTorch stores it.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

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
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> Tensor:
        delta = (self.lora_P * self.lora_s) @ self.lora_Q * self.scaling
        return delta.reshape(self.base_layer.weight.shape)

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


def _orthonormal(n: int, rank: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, rank, dtype=torch.float64, generator=gen))
    return q.float()


class LoRALinear(SVDLoRA):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.base_layer.bias)


class LoRAConv2d(SVDLoRA):
    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer
        return F.conv2d(x, self.effective_weight(), b.bias, b.stride, b.padding, b.dilation, b.groups)


class LoRAConvTranspose2d(SVDLoRA):
    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer
        return F.conv_transpose2d(
            x, self.effective_weight(), b.bias, b.stride, b.padding, b.output_padding, b.groups, b.dilation
        )


_WRAPPERS: dict[type[nn.Module], type[SVDLoRA]] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
    nn.ConvTranspose2d: LoRAConvTranspose2d,
}


def inject(
    model: nn.Module, patterns: Iterable[str], side: Side, config: LoRAConfig = LoRAConfig()
) -> list[str]:
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


def set_trainable(model: nn.Module, stage: Stage) -> list[str]:
    """Freeze everything, then open the adapter parameters the stage trains.

    stage1: every P, s, Q on both sides. ttft: every encoder P, s, Q and the decoder's s only
    (the decoder's P and Q must stay equal to the stage-1 adapter both sides hold).
    Returns the qualified names of the trainable parameters.
    """
    if stage not in ("stage1", "ttft", "frozen"):
        raise TTFTError(f"unknown training stage {stage!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    opened = []
    for name, layer in lora_layers(model):
        for pname in ("lora_P", "lora_s", "lora_Q"):
            open_it = stage == "stage1" or (
                stage == "ttft" and (layer.side == "encoder" or pname == "lora_s")
            )
            if open_it:
                getattr(layer, pname).requires_grad_(True)
                opened.append(f"{name}.{pname}")
    return opened


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
