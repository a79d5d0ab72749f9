"""Adapter files: SVD-LoRA tensors alone in safetensors, with their card in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from ttft_archive.ttft_core.errors import TTFTError

from .atomic import write_bytes_atomic


def save_adapter(path: str | Path, state: dict[str, Tensor], card: dict) -> None:
    data = save({k: v.contiguous() for k, v in state.items()}, metadata={"card": json.dumps(card)})
    write_bytes_atomic(path, data)


def load_adapter(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    path = Path(path)
    try:
        data = path.read_bytes()
        state = load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except FileNotFoundError:
        raise TTFTError(f"{path}: no such adapter file") from None
    except (SafetensorError, ValueError) as exc:
        raise TTFTError(f"{path}: not a safetensors adapter file ({exc})") from None
    return state, json.loads(metadata.get("card", "{}"))
