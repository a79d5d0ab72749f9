"""A codec round trip on one image: what the README's first command shows until the archive
flows exist. Real bytes: the rate is the length of the tile bitstream."""

from __future__ import annotations

import time
from pathlib import Path

from adapters.image_files import read_rgb
from adapters.zoo import default_codec_id, open_codec
from ttft_core import TileCodec, TTFTConfig, attach_adapter, finetune
from ttft_core.metrics import bpp, psnr

SAMPLE = Path(__file__).resolve().parent.parent / "adapters" / "samples" / "kodim23_crop256.png"


def roundtrip(image: str | None = None, codec: str | None = None, ttft_steps: int = 0) -> dict:
    path = Path(image) if image else SAMPLE
    tile = read_rgb(path)
    name = codec or default_codec_id("rgb") or "hyperprior-small"
    model, codec_id, trained = open_codec(name, channels=3)
    if ttft_steps:
        attach_adapter(model)
    tc = TileCodec(model, codec_id, adapter_id="zero" if ttft_steps else None)
    start = time.perf_counter()
    state = finetune(tc, tile, config=TTFTConfig(steps=ttft_steps)).state if ttft_steps else None
    data = tc.compress(tile, state)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    out = tc.decompress(data)
    decode_s = time.perf_counter() - start
    _, h, w = tile.shape
    return {
        "image": str(path), "height": h, "width": w, "codec": codec_id, "trained": trained,
        "ttft_steps": ttft_steps, "bytes": len(data), "bpp": bpp(len(data), h, w),
        "psnr_db": psnr(out, tile), "encode_seconds": encode_s, "decode_seconds": decode_s,
    }  # fmt: skip
