"""Raster ingest and query as plain functions (the Prefect flows wrap these): tile a scene, code
each tile into the archive, and bring back a window as a GeoTIFF."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from ttft_archive.adapters import outputs, raster
from ttft_archive.adapters.archive import Archive, TileGrid
from ttft_archive.configs import IngestOptions
from ttft_archive.configs.settings import RASTER_TILE
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.flows.jobs.tiles import (
    Pending,
    Progress,
    StoredProfile,
    check_key,
    codec_label,
    complete_profile,
    decoders_for,
    profile_settings,
    run_tiles,
    tile_key,
    tile_outcome,
    tiles_per_batch,
    window_weights_of,
)
from ttft_archive.flows.jobs.worker_cache import per_thread
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.band_context import within_bands
from ttft_archive.ttft_core.metrics import bits_per_pixel
from ttft_archive.ttft_core.missing_pixels import fill_missing, on_valid_pixels
from ttft_archive.ttft_core.value_window import ValueWindow, shared_weight


def item_id_for(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem).strip(".") or "item"


def band_groups(count: int, channels: int) -> list[list[int]]:
    if count % channels:
        raise TTFTError(
            f"{count} bands cannot be split into groups of {channels} codec channels: "
            f"use a 1-channel (gray16) codec, or name the groups (--bands 1,2,3;4)"
        )
    return [list(range(i + 1, i + channels + 1)) for i in range(0, count, channels)]


def check_band_groups(groups: list[list[int]], count: int) -> list[list[int]]:
    """Groups named by the user: 1-based bands of this raster, three (RGB codec) or one (gray16)."""
    flat = [b for g in groups for b in g]
    if not groups or any(len(g) not in (1, 3) for g in groups):
        raise TTFTError(f"band groups {groups}: each group needs 3 bands (an RGB codec) or 1 (a gray16 codec)")
    if any(not 1 <= b <= count for b in flat) or len(set(flat)) != len(flat):
        raise TTFTError(f"band groups {groups}: bands must be distinct and between 1 and {count}")
    return [list(g) for g in groups]


def task_coders(settings, names: dict[int, str], task: str) -> dict[int, codec_setup.TaskCoder]:
    """The record of each band-group size's codec for ``task`` (with the task's adapter, when the
    store has one)."""
    return {size: codec_setup.task_coder(settings, name, size, task) for size, name in sorted(names.items())}


def build_coders(coders: dict[int, codec_setup.TaskCoder]) -> dict:
    return {size: codec_setup.build(coder) for size, coder in sorted(coders.items())}


def codec_names(settings, codec: str | None, quality: str | None, sizes: set[int]) -> dict[int, str]:
    """A codec for each band-group size: ``codec`` where its channels fit, the family's best otherwise."""
    names = {}
    for size in sorted(sizes):
        chosen = codec if codec and codec_setup.channels_for(codec, size) == size else None
        names[size] = codec_setup.resolve_codec_name(settings, chosen, quality, size)
    return names


def tile_window(grid: TileGrid, info: raster.RasterInfo, row: int, col: int) -> Window:
    left, top = col * grid.tile_width, row * grid.tile_height
    return Window(left, top, min(grid.tile_width, info.width - left), min(grid.tile_height, info.height - top))


@dataclass(frozen=True)
class RasterIngest:
    """Everything a worker needs to code any tile of one raster item into its profile (a TileJob).
    Small and picklable: it travels to Dask workers, which open the source and codecs themselves."""

    source: str
    archive_url: str
    archive_uid: str
    item: str
    task: str
    info: dict
    grid: dict
    groups: list
    offsets: list
    scales: list
    coders: dict  # band-group size -> codec_setup.TaskCoder
    settings: dict  # the profile's settings, checked against the codecs each worker builds
    storage_options: dict | None = None
    source_options: dict | None = None
    task_bands: dict | None = None  # a cross-band task's band names -> 0-based channels
    batch: int = 1  # tiles tuned together (settings' ttft.batch_budget())

    @property
    def label(self) -> str:
        return f"{self.item}/{self.task}"

    def tile_key(self, index: tuple[int, int, int]) -> str:
        return tile_key(np.concatenate(self._read(index)), self.settings)

    def pending(self, index: tuple[int, int, int], key: str | None, profile) -> Pending | dict:
        """The tile to code, or the outcome of one that needs none (kept, or written empty)."""
        pixels, valid = self._read(index)
        key = check_key(tile_key(np.concatenate([pixels, valid]), self.settings), key, self.source, index)
        if profile.key(index) == key:
            return tile_outcome(index, key, "kept")
        group, read = self.groups[index[0]], self._bands_read(index)
        rows = [read.index(b) for b in group]
        if not valid[rows].any():
            return tile_outcome(index, key, "empty", profile.write_empty(index, key))
        x, task = torch.from_numpy(self._unit(pixels[rows], group)), self._task(index, pixels)
        if not valid[rows].all():  # a collar's pixels come back as nodata: code the scene's only
            mask = torch.from_numpy(valid[rows])
            x, task = fill_missing(x, mask), on_valid_pixels(task, mask)
        mask, weight = raster.pack_missing(valid[rows]), self._window_weights.get(len(group))
        return Pending(index, key, x, self._coders()[len(group)], task, nodata_mask=mask, weight=weight)

    @property
    def _window_weights(self) -> dict[int, float]:
        return window_weights_of(self.settings["coders"])

    def _bands_read(self, index: tuple[int, int, int]) -> list[int]:
        """A cross-band task reads every stored band of the window (the key covers them all)."""
        if self.task_bands is None:
            return self.groups[index[0]]
        return sorted(b for g in self.groups for b in g)

    def _read(self, index: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        s, r, c = index
        window = tile_window(TileGrid(**self.grid), raster.RasterInfo.from_dict(self.info), r, c)
        if "://" in self.source:
            # a remote source is read through an fsspec opener, which rasterio ties to the context
            # that opened it: open and close it within the tile's own task
            with raster.WindowReader(self.source, self.source_options) as reader:
                return reader.read(window, self._bands_read(index))
        reader = per_thread("reader", self.source, lambda: raster.WindowReader(self.source, self.source_options))
        return reader.read(window, self._bands_read(index))

    def _unit(self, pixels: np.ndarray, bands: list[int]) -> np.ndarray:
        return raster.to_unit(pixels, [self.offsets[b - 1] for b in bands], [self.scales[b - 1] for b in bands])

    def _task(self, index: tuple[int, int, int], pixels: np.ndarray):
        if self.task_bands is None:
            return get_task(self.task)
        bands = self._bands_read(index)
        context = torch.zeros((self.info["count"], *pixels.shape[1:]))
        context[[b - 1 for b in bands]] = torch.from_numpy(self._unit(pixels, bands))
        full = get_task(self.task, bands=self.task_bands, scales=tuple(self.scales))
        return within_bands(full, context, [b - 1 for b in self.groups[index[0]]])

    def _coders(self):
        def make():
            coders = build_coders(self.coders)
            if raster_profile_settings(self.task, coders, self.task_bands, self._window_weights) != self.settings:
                raise TTFTError(
                    f"{self.label}: this worker's codecs differ from the profile's settings "
                    f"(another codec zoo or configuration?)"
                )
            return coders

        return per_thread("raster-coders", json.dumps(self.settings, sort_keys=True) + repr(self.coders), make)


def plan_raster(
    source: str,
    archive_url: str,
    options: IngestOptions | None = None,
    *,
    item_id: str | None = None,
    storage_options: dict | None = None,
    source_options: dict | None = None,
    **fields,
) -> RasterIngest:
    """Check the source and the options (``options``, or IngestOptions ``fields``), create the item
    and its profile: the work before any tile. ``storage_options`` are for an s3:// archive,
    ``source_options`` for an s3:// source (the archive's by default)."""
    options = IngestOptions.of(options, **fields)
    settings = codec_setup.job_settings(options)
    source_options = source_options if source_options is not None else storage_options
    info = raster.raster_info(source, source_options)
    settings.limits.check_raster(source, info.width, info.height, info.count)  # before any pixel is read
    if options.bands:
        groups = check_band_groups(options.bands, info.count)
    else:
        groups = band_groups(info.count, codec_setup.channels_for(options.codec, info.count))
    item = item_id or item_id_for(source)
    stored = StoredProfile.read(archive_url, storage_options, item, options.task)
    window = stored.window(options.window)
    if window != options.window:
        settings = codec_setup.job_settings(options.model_copy(update={"window": window}))
    names = codec_names(settings, options.codec, options.quality, {len(g) for g in groups})
    coders = task_coders(settings, names, options.task)
    tile = options.tile or stored.tile or RASTER_TILE
    scanned = raster.scan(source, storage_options=source_options, tile=tile)
    offsets, scales = raster.value_mapping(info.dtype, scanned.lo, scanned.hi)
    task_bands = cross_band_mapping(
        options.task, settings, groups, scales, raster.colour_band_mapping(info.colorinterp)
    )
    if options.trade_off is None and stored.coders is not None:
        weights = stored.window_weights()  # the profile goes on with the trade-off it was coded with
    else:
        weights = foreseen_window_weights(scanned, offsets, scales, groups, coders, settings.codec.trade_off)
    archive = Archive(archive_url, storage_options)
    grid = TileGrid(len(groups), math.ceil(info.height / tile), math.ceil(info.width / tile), tile, tile)
    meta = {
        "kind": "raster",
        **info.to_dict(),
        "path": Path(source).name,
        "sha256": scanned.sha256,
        "offsets": offsets,
        "scales": scales,
        "band_groups": groups,
    }
    profile = raster_profile_settings(options.task, build_coders(coders), task_bands, weights)
    archive.create_item(item, _as_stored(archive, item, meta), grid)
    archive.profile(item, options.task, profile)
    return RasterIngest(
        source=source,
        archive_url=archive_url,
        archive_uid=archive.uid,
        item=item,
        task=options.task,
        info=info.to_dict(),
        grid=grid.to_dict(),
        groups=groups,
        offsets=offsets,
        scales=scales,
        coders=coders,
        settings=profile,
        storage_options=storage_options,
        source_options=source_options,
        task_bands=task_bands,
        batch=tiles_per_batch(settings.ttft.batch_budget(), tile),
    )


def foreseen_window_weights(
    scanned: raster.Scan, offsets: list, scales: list, groups: list, coders: dict, trade_off: str
) -> dict[int, float]:
    """For each codec that tunes tiles in their value windows, the task-loss weight its tiles
    share where ``trade_off`` is ``item`` (value_window.shared_weight over the windows the scan
    foresees: those of the tiles with valid pixels in all the group's bands); none for ``tile``."""
    if trade_off != "item":
        return {}
    lo, hi = raster.tile_value_ranges(scanned, offsets, scales)
    windows: dict[int, list[ValueWindow]] = {}
    for group in groups:
        coder, bands = coders[len(group)], [b - 1 for b in group]
        if not (coder.windowed and coder.ttft):
            continue
        for r, c in np.ndindex(*lo.shape[1:]):
            if not np.isnan(lo[bands, r, c]).any():
                windows.setdefault(len(group), []).append(ValueWindow.spanning(lo[bands, r, c], hi[bands, r, c]))
    return {size: shared_weight(found) for size, found in windows.items()}


def _as_stored(archive: Archive, item: str, meta: dict) -> dict:
    """``meta``, or the item's stored source where that was written before the band meaning was
    kept and agrees with ``meta`` on everything else: ingesting into it again changes nothing."""
    try:
        stored = archive.item(item)["source"]
    except TTFTError:  # not there yet (or unfinished: it is written again whole)
        return meta
    older = {k: v for k, v in meta.items() if k not in raster.BAND_MEANING}
    return stored if not any(k in stored for k in raster.BAND_MEANING) and stored == older else meta


def raster_profile_settings(task: str, coders, task_bands: dict | None, weights: dict | None = None) -> dict:
    """A raster profile's settings: a cross-band task's band mapping and the loss weight its
    windowed tiles share shape its bytes too (absent where each tile has its own: profiles coded
    before keep their settings and keys)."""
    settings = profile_settings(task, coders) | ({"task_bands": task_bands} if task_bands else {})
    for size, weight in (weights or {}).items():
        settings["coders"][str(size)]["window_weight"] = weight
    return settings


def cross_band_mapping(
    task: str, settings, groups: list[list[int]], scales: list[float], colours: dict[str, int] | None = None
) -> dict | None:
    """For a task over named bands (ndvi, water...): its band mapping, checked against what the
    raster has and what is ingested; None for a task of one band group. The mapping is the
    settings' (``raster.band_names``), else ``colours`` (what the raster's colour interpretation
    states, ``raster.colour_band_mapping``), else the task's default (blue, green, red, nir)."""
    if "bands" not in get_task(task).params:
        return None
    mapping = settings.raster.task_bands() or colours or dict(get_task(task).params["bands"])
    the_task = get_task(task, bands=mapping, scales=tuple(scales))  # names the bands it lacks
    stored = {b - 1 for g in groups for b in g}
    missing = sorted(n for n, ch in the_task.params["bands"].items() if ch not in stored)
    if missing:
        raise TTFTError(
            f"task {task!r} needs bands {', '.join(missing)}, which this raster has not or the band "
            f"groups leave out (raster.band_names: {mapping})"
        )
    return the_task.params["bands"]


def ingest_raster(
    source: str, archive_url: str, options: IngestOptions | None = None, progress: Progress | None = None, **kwargs
) -> dict:
    """Plan, code every tile the archive lacks one by one, mark complete: the whole ingest without
    Prefect (the flows run the same steps with tile tasks). ``kwargs`` are plan_raster's."""
    started = time.perf_counter()
    return run_tiles(plan_raster(source, archive_url, options, **kwargs), progress, started)


def query_raster(
    archive_url: str | Archive,
    item: str,
    task: str = "pixel",
    bbox: tuple | None = None,
    crs: str | None = None,
    out: str | None = None,
    storage_options: dict | None = None,
) -> dict:
    if out:
        raster.check_output_file(out)
    _, meta, grid, profile = complete_profile(archive_url, item, task, "raster", storage_options)
    info = raster.RasterInfo.from_dict(meta)
    window = raster.bbox_window(info, bbox, crs) if bbox else Window(0, 0, info.width, info.height)
    mosaic = raster.Mosaic(meta, window, grid.tile_height, grid.tile_width)
    decoders = decoders_for(profile.settings)
    read = mosaic.tiles()
    profile.prefetch(read)
    for index in read:
        data = profile.read_tile(index)
        if data is not None:  # an empty tile (nodata only) stays invalid
            x = decoders[len(meta["band_groups"][index[0]])].decompress(data).numpy()
            mosaic.place(index, x, profile.nodata_mask(index))
    array, valid, info = mosaic.window_arrays()
    if out:
        sizes = profile.figures()["nbytes"]
        nbytes = sum(int(sizes[i]) for i in read)
        tags = {
            "TTFT_LOSSY": "learned codec reconstruction",
            "TTFT_CODEC": codec_label(profile.settings),
            "TTFT_PROFILE": task,
            "TTFT_BPP_OF_TILES_READ": f"{bits_per_pixel(nbytes, mosaic.pixels_read()):.4f}",
        }
        with outputs.output_file(out, storage_options) as local:
            raster.write_geotiff(local, array, info, window, tags, valid)
    return {
        "item": item,
        "profile": task,
        "window": [window.col_off, window.row_off, window.width, window.height],
        "shape": list(array.shape),
        "tiles_read": read,
        "out": out,
        "array": array,
        "valid": valid,
    }
