from .settings import CodecSettings, IngestOptions, LoRASettings, Settings, TTFTSettings, load_settings, resolve_device

__all__ = [
    "CodecSettings",
    "IngestOptions",
    "LoRASettings",
    "Settings",
    "TTFTSettings",
    "load_settings",
    "resolve_device",
]
