"""A codec round trip on one image (`ttft roundtrip`). Real bytes: the rate is the length of the
tile bitstream."""

from __future__ import annotations

import time
from pathlib import Path

from ttft_archive.adapters import SAMPLES
from ttft_archive.adapters.image_files import read_rgb
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.ttft_core import compress_tuned, finetune
from ttft_archive.ttft_core.metrics import bpp, psnr

SAMPLE = SAMPLES / "kodim23_crop256.png"


def roundtrip(
    image: str | None = None,
    codec: str | None = None,
    ttft_steps: int = 0,
    preset: str | None = None,
    quality: int | None = None,
    task: str = "pixel",
    adapter_from: str | None = None,
    device: str | None = None,
) -> dict:
    """``adapter_from`` names the task whose stage-1 adapter starts a task that has none (open set);
    ``device`` where TTFT runs (auto, cpu, cuda, cuda:N; None: the settings' ttft.device)."""
    settings = codec_setup.job_settings(preset, ttft_steps, adapter_from, device)
    task_ = get_task(task)
    path = Path(image) if image else SAMPLE
    tile = read_rgb(path)
    name = codec_setup.resolve_codec_name(settings, codec, quality, channels=3)
    tc, ttft_config, card = codec_setup.prepare(settings, name, 3, ttft_steps, task=task)
    codec_id = tc.codec_id
    start = time.perf_counter()
    result = finetune(tc, tile, task_.loss, ttft_config) if ttft_config else None
    data = compress_tuned(tc, tile, result)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    out = tc.decompress(data)
    decode_s = time.perf_counter() - start
    _, h, w = tile.shape
    return {
        "image": str(path),
        "height": h,
        "width": w,
        "codec": codec_id,
        "adapter": tc.adapter_id,
        "trained": card is not None,
        "ttft_steps": ttft_steps,
        "ttft_device": str(ttft_config.device) if ttft_config else None,
        "bytes": len(data),
        "bpp": bpp(len(data), h, w),
        "psnr_db": psnr(out, tile),
        "task": task_.name,
        "task_metric": task_.metric_name,
        "task_value": task_.metric(out, tile),
        "encode_seconds": encode_s,
        "decode_seconds": decode_s,
    }
