from .settings import CodecSettings, LoRASettings, Settings, TTFTSettings, load_settings, resolve_device

__all__ = ["CodecSettings", "LoRASettings", "Settings", "TTFTSettings", "load_settings", "resolve_device"]
