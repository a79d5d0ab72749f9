"""ttft_core: tensors and bytes only. SVD-LoRA, codec backbones, tile bitstreams, test-time
fine-tuning and metrics; nothing here knows files, Zarr or Prefect."""

from .backbones import BackboneConfig, build, preset, registered
from .errors import BitstreamError, TTFTError
from .lora import LoRAConfig
from .tile_codec import TileCodec, attach_adapter
from .ttft import TTFTConfig, TTFTResult, compress_tuned, finetune, finetune_batch

__all__ = [
    "BackboneConfig",
    "BitstreamError",
    "LoRAConfig",
    "TTFTConfig",
    "TTFTError",
    "TTFTResult",
    "TileCodec",
    "attach_adapter",
    "build",
    "compress_tuned",
    "finetune",
    "finetune_batch",
    "preset",
    "registered",
]
