"""ttft_core: tensors and bytes only. SVD-LoRA, codec backbones, tile bitstreams, test-time
fine-tuning and metrics; nothing here knows files, Zarr or Prefect."""

from .backbones import BackboneConfig, build, preset, registered
from .batched_ttft import finetune_batch
from .errors import BitstreamError, TTFTError
from .lora import LoRAConfig
from .tile_codec import TileCodec, attach_adapter
from .ttft import TTFTConfig, compress_tuned, finetune

__all__ = [
    "BackboneConfig", "BitstreamError", "LoRAConfig", "TTFTConfig", "TTFTError", "TileCodec",
    "attach_adapter", "build", "compress_tuned", "finetune", "finetune_batch", "preset", "registered",
]  # fmt: skip
