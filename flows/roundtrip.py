"""A codec round trip on one image: what the README's first command shows until the archive
flows exist. Real bytes: the rate is the length of the tile bitstream."""

from __future__ import annotations

import time
from pathlib import Path

from adapters.image_files import read_rgb
from adapters.zoo import codec_for_quality, default_codec_id, open_codec
from configs import load_settings
from ttft_core import TileCodec, attach_adapter, finetune
from ttft_core.metrics import bpp, psnr
from ttft_core.tasks import get_task

SAMPLE = Path(__file__).resolve().parent.parent / "adapters" / "samples" / "kodim23_crop256.png"


def roundtrip(image: str | None = None, codec: str | None = None, ttft_steps: int = 0,
              preset: str | None = None, quality: int | None = None, task: str = "pixel") -> dict:  # fmt: skip
    settings = load_settings(preset, ttft={"steps": ttft_steps})
    task_ = get_task(task)
    path = Path(image) if image else SAMPLE
    tile = read_rgb(path)
    family = settings.codec.family
    if quality is not None:
        codec = codec_for_quality(family, quality)
    name = codec or settings.codec.codec or default_codec_id(family) or "hyperprior-small"
    model, codec_id, card = open_codec(name, channels=3)
    if ttft_steps:
        # no stage-1 adapter yet: the open-set start, an adapter at zero that both sides can rebuild
        attach_adapter(model, config=settings.lora.to_core())
    tc = TileCodec(model, codec_id, adapter_id="zero" if ttft_steps else None, s_step=settings.codec.s_step)
    start = time.perf_counter()
    ttft_config = settings.ttft.to_core(codec_lambda=card["lambda"] if card else None)
    state = finetune(tc, tile, task_.loss, ttft_config).state if ttft_steps else None
    data = tc.compress(tile, state)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    out = tc.decompress(data)
    decode_s = time.perf_counter() - start
    _, h, w = tile.shape
    return {
        "image": str(path), "height": h, "width": w, "codec": codec_id, "trained": card is not None,
        "ttft_steps": ttft_steps, "bytes": len(data), "bpp": bpp(len(data), h, w),
        "psnr_db": psnr(out, tile), "task": task_.name, "task_metric": task_.metric_name,
        "task_value": task_.metric(out, tile), "encode_seconds": encode_s, "decode_seconds": decode_s,
    }  # fmt: skip
