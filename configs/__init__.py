from .settings import CodecSettings, LoRASettings, Settings, TTFTSettings, load_settings

__all__ = ["CodecSettings", "LoRASettings", "Settings", "TTFTSettings", "load_settings"]
