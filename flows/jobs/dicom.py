"""DICOM series ingest and slice-range query as plain functions (the Prefect flows wrap these)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from ttft_archive.adapters import dicom, outputs, pixel_exceptions
from ttft_archive.adapters.archive import Archive, TileGrid
from ttft_archive.configs import IngestOptions, Settings
from ttft_archive.configs.settings import DICOM_TILE
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.flows.jobs.tiles import (
    Pending,
    Progress,
    StoredProfile,
    check_key,
    complete_profile,
    decoders_for,
    profile_settings,
    run_tiles,
    tile_key,
    tile_outcome,
    tiles_per_batch,
)
from ttft_archive.flows.jobs.worker_cache import per_thread
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.missing_pixels import on_valid_pixels


def series_item_id(series: dicom.Series) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", series.uid).strip(".") or "series"


@dataclass(frozen=True)
class DicomIngest:
    """Everything a worker needs to code any tile of one series into its profile (a TileJob,
    picklable)."""

    series: dicom.Series
    archive_url: str
    archive_uid: str
    item: str
    task: str
    grid: dict
    coder: codec_setup.TaskCoder
    settings: dict  # the profile's settings, checked against the codec each worker builds
    storage_options: dict | None = None
    batch: int = 1  # tiles tuned together (settings' ttft.batch_budget())

    @property
    def label(self) -> str:
        return f"{self.item}/{self.task}"

    def tile_key(self, index: tuple[int, int, int]) -> str:
        return tile_key(self._pixels(index), self.settings)

    def pending(self, index: tuple[int, int, int], key: str | None, profile) -> Pending | dict:
        """The tile to code, or the outcome of one the archive has already."""
        pixels = self._pixels(index)
        key = check_key(tile_key(pixels, self.settings), key, f"series {self.series.uid}", index)
        if profile.key(index) == key:
            return tile_outcome(index, key, "kept")
        x, task = torch.from_numpy(np.ascontiguousarray(pixels))[None], get_task(self.task)
        kept = self._kept(index)
        if kept is not None and kept.any():
            # a query puts the slice's exception set back exactly (the field outside a CT's
            # reconstruction disc, padding), so the tuning judges the other pixels only. Unlike a
            # raster's collar the pixels stay as the mapping clips them: a flat floor costs less
            # than a smooth fill, which draws the skull's and tissue's levels out into the field.
            task = on_valid_pixels(task, torch.from_numpy(~kept))
        return Pending(index, key, x, self._coder(), task)

    def _pixels(self, index: tuple[int, int, int]) -> np.ndarray:
        return self._crop(self._slice(index[0])[0], index)

    def _kept(self, index: tuple[int, int, int]) -> np.ndarray | None:
        kept = self._slice(index[0])[1]
        return None if kept is None else self._crop(kept, index)

    def _slice(self, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        # the slice stays in this thread's cache for the next tile of the same slice: keyed by its file
        # as it is now (two series may share a UID, say an edited copy, and a file may be rewritten)
        ref = self.series.slices[s]
        stat = os.stat(ref.path)
        where = f"{ref.path}:{ref.frame}:{stat.st_size}:{stat.st_mtime_ns}"
        return per_thread("slice", where, lambda: dicom.read_unit_and_kept(self.series, s))

    def _crop(self, image: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
        _, r, c = index
        tile = self.grid["tile_height"]
        return image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]

    def _coder(self):
        def make():
            coder = codec_setup.build(self.coder)
            if profile_settings(self.task, {1: coder}) != self.settings:
                raise TTFTError(f"{self.label}: this worker's codec differs from the profile's settings")
            return coder

        return per_thread("dicom-coder", json.dumps(self.settings, sort_keys=True) + repr(self.coder), make)


def plan_dicom(
    sources: list[str],
    archive_url: str,
    options: IngestOptions | None = None,
    *,
    storage_options: dict | None = None,
    **fields,
) -> list[DicomIngest]:
    """Every series found in ``sources`` (files or folders) becomes one item: create them and
    their profiles, before any tile. ``options`` (or IngestOptions ``fields``) as for rasters; the
    settings preset is ``ct`` unless they name one. Each series is coded by its modality's family
    (settings' codec.dicom_families) unless a codec is named."""
    options = IngestOptions.of(options, **fields)
    settings = codec_setup.job_settings(options, default_preset="ct")
    if "bands" in get_task(options.task).params:
        raise TTFTError(f"task {options.task!r} is for multispectral rasters, not DICOM series")
    found = dicom.find_series(sources)  # before the archive is touched: bad sources leave it as it was
    for series in found:  # from the headers, before any pixel is read
        settings.limits.check_series(
            f"{', '.join(map(str, sources))}: series {series.uid}", series.rows, series.cols, len(series.slices)
        )
    # the zoo is scanned once per modality and stored codec, not once per series
    names: dict[tuple[str, str | None], str] = {}
    coders: dict[str, tuple[codec_setup.TaskCoder, dict]] = {}
    plans = []
    for series in found:
        item = series_item_id(series)
        stored = StoredProfile.read(archive_url, storage_options, item, options.task)
        began_with = (stored.coders or {}).get("1", {}).get("codec")
        if (series.modality, began_with) not in names:
            names[series.modality, began_with] = series_codec(settings, options, series.modality, began_with)
        name = names[series.modality, began_with]
        if name not in coders:
            coder = codec_setup.task_coder(settings, name, 1, options.task)
            coders[name] = coder, profile_settings(options.task, {1: codec_setup.build(coder)})
        plans.append((series, item, options.tile or stored.tile or DICOM_TILE, *coders[name]))
    archive = Archive(archive_url, storage_options)
    jobs = []
    for series, item, tile, coder, profile in plans:
        grid = TileGrid(len(series.slices), math.ceil(series.rows / tile), math.ceil(series.cols / tile), tile, tile)
        meta = {
            "kind": "dicom",
            "series_uid": series.uid,
            "modality": series.modality,
            "rows": series.rows,
            "cols": series.cols,
            "mapping": series.mapping,
            "bits_stored": series.bits_stored,
            "signed": series.signed,
            "slices": len(series.slices),
        }
        headers = [dicom.slice_header(series, i) for i in range(len(series.slices))]
        exceptions = [dicom.slice_exceptions(series, i) for i in range(len(series.slices))]
        frames = [None if ref.frame is None else ref.frame + 1 for ref in series.slices]
        _create_item(archive, item, meta, grid, headers, exceptions, frames)
        archive.profile(item, options.task, profile)
        jobs.append(
            DicomIngest(
                series=series,
                archive_url=archive_url,
                archive_uid=archive.uid,
                item=item,
                task=options.task,
                grid=grid.to_dict(),
                coder=coder,
                settings=profile,
                storage_options=storage_options,
                batch=tiles_per_batch(settings.ttft.batch_budget(), tile),
            )
        )
    return jobs


def series_codec(settings: Settings, options: IngestOptions, modality: str, began_with: str | None) -> str:
    """The codec a series is coded with: a one-channel codec the options or settings name, or the
    point of ``--quality`` in its modality's family; else ``began_with``, the codec its profile
    was coded with where the archive holds the profile (an archive keeps coding as it began,
    whatever the defaults became since); else its modality's family's default. The backbone preferred is
    codec.dicom_backbone (checkerboard). A 3-channel codec named for a mixed batch (an inbox of
    scenes and series) leaves series to their families."""
    named = options.codec or settings.codec.codec
    if named and codec_setup.channels_for(named, 1) != 1:
        named = None
    if not named and options.quality is None and began_with:
        return began_with
    family = codec_setup.dicom_family(settings, modality)
    backbone = settings.codec.dicom_backbone
    return codec_setup.resolve_codec_name(
        settings, named, options.quality, channels=1, family=family, backbone=backbone
    )


def _create_item(
    archive: Archive, item: str, meta: dict, grid: TileGrid, headers: list, exceptions: list, frames: list
) -> None:
    """The item with its slice headers and its pixel exceptions (with each slice's source frame). A
    new item gets its exceptions before the archive writes its attributes (last), so an interrupted
    creation is redone whole; an existing one is checked first, and gets them if it was made before
    they were kept."""
    exists = item in archive.item_ids() and "grid" in archive.item(item)
    if exists:
        archive.create_item(item, meta, grid, headers)  # refuses another source or grid
    stored = pixel_exceptions.read(archive.root, item) if exists else None
    if stored is None:
        attrs = {"mapping": meta["mapping"], "hu_range": [dicom.HU_MIN, dicom.HU_MAX], "frames": frames}
        pixel_exceptions.write(archive.root, item, exceptions, attrs)
    elif stored[0] != exceptions:
        raise TTFTError(f"{archive.url}: item {item!r} exists with other out-of-range or padding pixels")
    if not exists:
        archive.create_item(item, meta, grid, headers)


def ingest_dicom(
    sources: list[str],
    archive_url: str,
    options: IngestOptions | None = None,
    progress: Progress | None = None,
    **kwargs,
) -> list[dict]:
    """The whole ingest without Prefect: plan, then each series' tiles one by one."""
    jobs = plan_dicom(sources, archive_url, options, **kwargs)
    return [run_tiles(job, progress, time.perf_counter()) for job in jobs]


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


def _exception_records(archive: Archive, item: str, slices: int) -> tuple[list[bytes], list[int | None]]:
    """The item's pixel-exception records and source frames. An item made before they were kept
    has none: its values were clipped to the codec's range then (ingest it again to keep them)."""
    stored = pixel_exceptions.read(archive.root, item)
    if stored is None:
        return [b""] * slices, [None] * slices
    return stored[0], stored[1].get("frames") or [None] * slices


def query_dicom(
    archive_url: str | Archive,
    item: str,
    task: str = "pixel",
    slices: str | None = None,
    out: str | None = None,
    storage_options: dict | None = None,
) -> dict:
    if out:
        dicom.check_output_folder(out)
    archive, meta, grid, profile = complete_profile(archive_url, item, task, "dicom", storage_options)
    chosen = parse_slices(slices, grid.slices)
    codec = decoders_for(profile.settings)[1]
    decoded, nbytes, read, slice_bytes = {}, 0, [], {}
    profile.prefetch([(s, r, c) for s in chosen for r in range(grid.rows) for c in range(grid.cols)])
    for s in chosen:
        slice_bytes[s] = 0
        image = np.zeros((grid.rows * grid.tile_height, grid.cols * grid.tile_width), np.float32)
        for r in range(grid.rows):
            for c in range(grid.cols):
                data = profile.read_tile((s, r, c))
                read.append((s, r, c))
                nbytes += len(data)
                slice_bytes[s] += len(data)
                x = codec.decompress(data)[0].numpy()
                image[
                    r * grid.tile_height : r * grid.tile_height + x.shape[0],
                    c * grid.tile_width : c * grid.tile_width + x.shape[1],
                ] = x
        decoded[s] = image[: meta["rows"], : meta["cols"]]
    series = dicom.Series(
        meta["series_uid"],
        (),
        meta["rows"],
        meta["cols"],
        meta["modality"],
        meta["mapping"],
        meta["bits_stored"],
        meta["signed"],
    )
    files = []
    if out:
        records, frames = _exception_records(archive, item, grid.slices)
        headers = archive.slice_headers(item, list(chosen))
        coder = profile.settings["coders"]["1"]
        stored, ratios = {}, {}
        for s in chosen:
            where = f"item {item!r} slice {s}"
            stored[s] = dicom.restore_slice(series, headers[s], decoded[s], records[s], where)
            # uncompressed: the slice's 16-bit pixels; compressed: its tiles and its exception record
            ratios[s] = meta["rows"] * meta["cols"] * 2 / max(slice_bytes[s] + len(records[s]), 1)
        label = f"{coder['codec']} (profile {task}" + (f", adapter {coder['adapter']})" if coder["adapter"] else ")")
        with outputs.output_folder(out, storage_options) as folder:
            written = dicom.write_derived_series(
                series,
                headers,
                stored,
                folder,
                ratios,
                label,
                {s: frames[s] for s in chosen},
            )
        files = outputs.output_names(out, written)
    return {
        "item": item,
        "profile": task,
        "slices": [chosen.start, chosen.stop],
        "tiles_read": read,
        "files": files,
        "arrays": decoded,
    }
