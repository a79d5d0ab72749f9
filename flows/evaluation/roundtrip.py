"""A codec round trip on one image (`ttft roundtrip`). Real bytes: the rate is the length of the
tile bitstream."""

from __future__ import annotations

from pathlib import Path

from ttft_archive.adapters import SAMPLES
from ttft_archive.adapters.image_files import read_rgb
from ttft_archive.configs import IngestOptions
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.ttft_core.metrics import bpp, psnr
from ttft_archive.ttft_core.tile_coding import code_tiles

SAMPLE = SAMPLES / "kodim23_crop256.png"


def roundtrip(image: str | None = None, options: IngestOptions | None = None, **fields) -> dict:
    """Code one 8-bit RGB image (the bundled sample by default) as an ingest would code a tile:
    ``options`` (or IngestOptions ``fields``: task, codec or quality, ttft_steps, adapter_from,
    preset, device) as for an ingest; their tile size plays no part."""
    options = IngestOptions.of(options, **fields)
    settings = codec_setup.job_settings(options)
    task = get_task(options.task)
    path = Path(image) if image else SAMPLE
    x = read_rgb(path)
    name = codec_setup.resolve_codec_name(settings, options.codec, options.quality, channels=3)
    codec, ttft_config = codec_setup.prepare(settings, name, 3, task=options.task)
    [tile], _ = code_tiles(codec, [x], [task], ttft_config)
    _, h, w = x.shape
    return {
        "image": str(path),
        "height": h,
        "width": w,
        "codec": codec.codec_id,
        "adapter": codec.adapter_id,
        "trained": not codec.codec_id.startswith("untrained-"),
        "ttft_steps": settings.ttft.steps,
        "ttft_device": str(ttft_config.device) if ttft_config else None,
        "bytes": len(tile.data),
        "bpp": bpp(len(tile.data), h, w),
        "psnr_db": psnr(tile.x_hat, x),
        "task": task.name,
        "task_metric": task.metric_name,
        "task_value": tile.fidelity,
        "encode_seconds": tile.ttft_seconds + tile.encode_seconds,
        "decode_seconds": tile.decode_seconds,
    }
