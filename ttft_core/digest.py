"""Content digests of weights: what a bitstream names to be sure it is decoded by the same model."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


def tensors_digest(tensors: dict[str, Tensor]) -> bytes:
    """sha256 over names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def base_weights(model: nn.Module) -> dict[str, Tensor]:
    """The state dict without adapter tensors, named as if no adapter were injected."""
    return {name.replace(".base_layer", ""): t for name, t in model.state_dict().items() if ".lora_" not in name}
