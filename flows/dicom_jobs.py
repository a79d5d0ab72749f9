"""DICOM series ingest and slice-range query as plain functions (the Prefect flows wrap these)."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import torch

from adapters import dicom
from adapters.archive import Archive, TileGrid
from configs import load_settings
from flows import codec_setup
from flows.raster_jobs import Progress
from flows.tiles import decoders_for, encode_tile, profile_settings, summarize, tile_key
from ttft_core import TTFTError
from ttft_core.tasks import get_task


def series_item_id(series: dicom.Series) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", series.uid).strip(".") or "series"


def ingest_dicom(sources: list[str], archive_url: str, task: str = "pixel", codec: str | None = None,
                 quality: int | None = None, ttft_steps: int = 0, tile: int = 256, preset: str | None = None,
                 storage_options: dict | None = None, progress: Progress | None = None) -> list[dict]:  # fmt: skip
    """Every series found in ``sources`` (files or folders) becomes one item."""
    settings = load_settings(preset or "ct", ttft={"steps": ttft_steps})
    name = codec_setup.resolve_codec_name(settings, codec, quality, channels=1)
    tile_codec, ttft_config, _ = codec_setup.prepare(settings, name, 1, ttft_steps)
    the_task = get_task(task)
    if "bands" in the_task.params:
        raise TTFTError(f"task {task!r} is for multispectral rasters, not DICOM series")
    found = dicom.find_series(sources)  # before the archive is touched: bad sources leave it as it was
    archive = Archive(archive_url, storage_options)
    reports = []
    for series in found:
        start = time.perf_counter()
        grid = TileGrid(len(series.slices), math.ceil(series.rows / tile), math.ceil(series.cols / tile), tile, tile)
        item = series_item_id(series)
        meta = {"kind": "dicom", "series_uid": series.uid, "modality": series.modality, "rows": series.rows,
                "cols": series.cols, "mapping": series.mapping, "bits_stored": series.bits_stored,
                "signed": series.signed, "slices": len(series.slices)}  # fmt: skip
        headers = [dicom.slice_header(series, i) for i in range(len(series.slices))]
        archive.create_item(item, meta, grid, headers)
        settings_ = profile_settings(task, {1: (tile_codec, ttft_config)})
        profile = archive.profile(item, task, settings_)
        written, total = 0, math.prod(grid.shape)
        for s in range(grid.slices):
            image = None  # read a slice only when one of its tiles needs coding
            for r in range(grid.rows):
                for c in range(grid.cols):
                    if image is None:
                        image = dicom.read_unit(series, s)
                    pixels = image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
                    key = tile_key(pixels, settings_)
                    if profile.key((s, r, c)) != key:
                        x = torch.from_numpy(np.ascontiguousarray(pixels))[None]
                        written += profile.write_tile((s, r, c), encode_tile(tile_codec, ttft_config, the_task, x, key))
                    if progress:
                        progress(s * grid.rows * grid.cols + r * grid.cols + c + 1, total)
        profile.mark_complete()
        reports.append(summarize(archive, item, task) | {"written_tiles": written, "seconds": time.perf_counter() - start})
    return reports


def parse_slices(text: str | None, count: int) -> range:
    """'A:B' (B excluded, either may be left out) or 'A' for one slice."""
    if not text:
        return range(count)
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            chosen = range(count)[slice(int(a) if a else None, int(b) if b else None)]
        else:
            chosen = range(int(text), int(text) + 1)
    except ValueError:
        raise TTFTError(f"--slices {text!r}: expected A:B or A") from None
    if not chosen or chosen.start < 0 or chosen.stop > count:
        raise TTFTError(f"--slices {text!r} selects nothing of the {count} slices")
    return chosen


def query_dicom(archive_url: str, item: str, task: str = "pixel", slices: str | None = None,
                out: str | None = None, storage_options: dict | None = None) -> dict:  # fmt: skip
    archive = Archive(archive_url, storage_options, create=False)
    meta, grid = archive.item(item)["source"], archive.grid(item)
    if meta["kind"] != "dicom":
        raise TTFTError(f"item {item!r} is a {meta['kind']}, not a DICOM series")
    profile = archive.profile(item, task)
    if not profile.complete:
        raise TTFTError(f"profile {item}/{task} is not complete: ingest it again to finish it")
    chosen = parse_slices(slices, grid.slices)
    codec = decoders_for(profile.settings)[1]
    decoded, nbytes, read = {}, 0, []
    for s in chosen:
        image = np.zeros((grid.rows * grid.tile_height, grid.cols * grid.tile_width), np.float32)
        for r in range(grid.rows):
            for c in range(grid.cols):
                data = profile.read_tile((s, r, c))
                read.append((s, r, c))
                nbytes += len(data)
                x = codec.decompress(data)[0].numpy()
                image[r * grid.tile_height : r * grid.tile_height + x.shape[0],
                      c * grid.tile_width : c * grid.tile_width + x.shape[1]] = x  # fmt: skip
        decoded[s] = image[: meta["rows"], : meta["cols"]]
    series = dicom.Series(meta["series_uid"], (), meta["rows"], meta["cols"], meta["modality"], meta["mapping"],
                          meta["bits_stored"], meta["signed"])  # fmt: skip
    files = []
    if out:
        ratio = len(chosen) * meta["rows"] * meta["cols"] * 2 / max(nbytes, 1)
        headers = archive.slice_headers(item, list(chosen))
        files = [str(p) for p in dicom.write_derived_series(series, headers, decoded, out, ratio, "TTFT_LIC")]
    return {"item": item, "profile": task, "slices": [chosen.start, chosen.stop], "tiles_read": read,
            "files": files, "arrays": decoded}  # fmt: skip
