"""What every ingest and query shares, whatever the source: the TileJob a planner makes, profile
settings, tile keys, coding tiles into the archive in batches, summaries, checks, listings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import numpy as np
import torch

from ttft_archive.adapters import dicom, pixel_exceptions, raster
from ttft_archive.adapters.archive import CODED, EMPTY, Archive, Profile, TileGrid, TileRecord
from ttft_archive.adapters.zoo import open_codec_by_id
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.worker_cache import per_thread
from ttft_archive.ttft_core import LoRAConfig, TileCodec, TTFTError, attach_adapter, lora
from ttft_archive.ttft_core.metrics import bits_per_pixel, compression_ratio
from ttft_archive.ttft_core.tasks import Task
from ttft_archive.ttft_core.tile_coding import code_tiles

Progress = Callable[[int, int], None]
Guard = Callable[[], ContextManager]  # a concurrency slot around the TTFT step
Coders = dict  # channels -> (TileCodec, TTFTConfig | None): one codec per band-group size
TileIndex = tuple[int, int, int]  # (slice or band group, row, col)


class TileJob(Protocol):
    """One planned item and task profile (RasterIngest, DicomIngest): everything a worker needs to
    code any of its tiles. Small and picklable, it travels to threads and Dask workers."""

    archive_url: str
    archive_uid: str  # changes when the archive is made anew: cached tiles never cross archives
    item: str
    task: str
    grid: dict  # TileGrid.to_dict()
    batch: int  # tiles tuned together
    storage_options: dict | None

    @property
    def label(self) -> str: ...

    def tile_key(self, index: TileIndex) -> str:
        """The tile's content key from its source pixels and the profile's settings."""

    def pending(self, index: TileIndex, key: str | None, profile: Profile) -> Pending | dict:
        """The tile to code, or the outcome of one that needs no coding (kept, or written empty)."""


def profile_settings(task: str, coders: Coders) -> dict:
    """Everything that shapes a profile's bytes, per codec channel count (JSON, stored with it)."""
    return {
        "task": task,
        "coders": {
            str(channels): {
                "codec": codec.codec_id,
                "codec_sha256": codec.codec_digest.hex(),
                "adapter": codec.adapter_id,
                "adapter_sha256": codec.adapter_digest.hex(),
                "ttft": _stored_ttft(ttft),
                "s_step": codec.s_step,
            }
            | _zero_adapter_shape(codec)
            # absent when off: profiles coded before windows existed keep their settings and keys
            | ({"window": "tile"} if codec.windowed else {})
            for channels, (codec, ttft) in sorted(coders.items())
        },
    }


def _stored_ttft(ttft) -> dict | None:
    """A profile's TTFT settings, all but the device: tiles tuned on any device decode alike, so an
    ingest begun on one machine goes on on another and keeps the tiles already coded (tuned again
    elsewhere, a tile's bytes could differ, as float arithmetic differs between devices)."""
    if not ttft:
        return None
    return {k: v for k, v in ttft.__dict__.items() if k != "device"} | {"milestones": list(ttft.milestones)}


def _zero_adapter_shape(codec: TileCodec) -> dict:
    """The zero adapter is rebuilt from its seed on the decoding side: with the rank and alpha the
    encoder used, which settings may change."""
    if codec.adapter_id != codec_setup.ZERO_ADAPTER:
        return {}
    _, layer = next(lora.lora_layers(codec.model))
    return {"lora": {"rank": layer.rank, "alpha": layer.scaling * layer.rank}}


def tile_key(pixels: np.ndarray, settings: dict) -> str:
    """What makes a tile: its source pixels and every setting that shapes its bytes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(f"{pixels.dtype}{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


@dataclass
class Pending:
    """A tile read, keyed and missing from the archive: what coding it needs. ``task`` is the
    tile's own (a cross-band task reads the tile's other bands)."""

    index: tuple[int, int, int]
    key: str
    x: torch.Tensor
    coder: tuple  # (TileCodec, TTFTConfig | None)
    task: Task
    nodata_mask: bytes = b""
    weight: float | None = None  # a windowed tile's task-loss weight (None: its own window's)


@dataclass(frozen=True)
class StoredProfile:
    """What an archive holds already for an item and a task profile: the item's tile side and
    the profile's coders' settings (None where there is no such item or profile). Read before the
    archive is created, so that a refused ingest leaves no archive behind; re-running or resuming
    an ingest made before a choice existed codes as it did."""

    tile: int | None = None
    coders: dict | None = None

    @classmethod
    def read(cls, url: str, storage_options: dict | None, item: str, task: str) -> StoredProfile:
        try:
            archive = Archive(url, storage_options, create=False)
            if not archive.has_item(item):
                return cls()
            tile = archive.grid(item).tile_height
            if task not in archive.profile_names(item):
                return cls(tile)
            return cls(tile, archive.profile(item, task).settings.get("coders", {}))
        except TTFTError:  # no archive there yet; one that cannot be opened is refused when it is
            return cls()

    def window(self, requested: str | None) -> str | None:
        """The value window an ingest codes with: the one it asks for, else the profile's own:
        ``item`` where none of its codecs used windows, ``tile`` where all did; else None (each
        family's own)."""
        if requested is not None or not self.coders:
            return requested
        windowed = {coder.get("window") == "tile" for coder in self.coders.values()}
        if windowed == {False}:
            return "item"
        return "tile" if windowed == {True} else None

    def window_weights(self) -> dict[int, float]:
        return window_weights_of(self.coders or {})


def window_weights_of(coders: dict) -> dict[int, float]:
    """From a profile's coders' settings, the task-loss weight each codec's windowed tiles share
    (none: each tile's own)."""
    return {int(c): coder["window_weight"] for c, coder in coders.items() if "window_weight" in coder}


def tiles_per_batch(batch_pixels: int, tile: int) -> int:
    """How many tiles TTFT tunes together: as many as ``batch_pixels`` holds, at least one (the
    settings' ttft.batch_budget() gives the budget of the device TTFT runs on)."""
    return max(1, batch_pixels // (tile * tile))


def job_batches(job, tiles: list) -> list[list]:
    """``tiles`` in order, ``job.batch`` to a list: what one ``encode_batch`` call codes."""
    return [tiles[i : i + job.batch] for i in range(0, len(tiles), job.batch)]


def encode_batch(
    job, tiles: list[tuple[tuple[int, int, int], str | None]], guard: Guard = contextlib.nullcontext
) -> list[dict]:
    """Code tiles (index, key or None) of one job unless the archive has their keys already. Tiles
    that share a codec and a shape are tuned in one TTFT batch; ``job.pending`` reads each one and
    settles the kept and the empty. Returns the tiles' outcomes in order."""
    profile = job_profile(job).refresh()
    indices = [tuple(int(i) for i in index) for index, _ in tiles]
    outcomes, pending = {}, []
    for index, (_, key) in zip(indices, tiles):
        found = job.pending(index, key, profile)
        if isinstance(found, Pending):
            pending.append(found)
        else:
            outcomes[index] = found
    for group in _batches(pending):
        codec, ttft_config = group[0].coder
        tiles, tasks, weights = [p.x for p in group], [p.task for p in group], [p.weight for p in group]
        coded, slot = code_tiles(codec, tiles, tasks, ttft_config, guard, weights)
        for p, tile in zip(group, coded):
            record = TileRecord(tile.data, p.key, tile.fidelity, tile.ttft_steps, tile.ttft_seconds, p.nodata_mask)
            outcomes[p.index] = tile_outcome(p.index, p.key, "coded", profile.write_tile(p.index, record), record, slot)
    return [outcomes[index] for index in indices]


def _batches(pending: list[Pending]) -> list[list[Pending]]:
    groups: dict = {}
    for p in pending:
        groups.setdefault((id(p.coder[0]), tuple(p.x.shape)), []).append(p)
    return list(groups.values())


def job_profile(job) -> Profile:
    """The profile a planned job writes into, opened once per worker thread: opening an archive
    reads its root, item and profile metadata, several requests each on S3, too many to repeat
    for every tile (``encode_batch`` refreshes what may have changed, one request a batch)."""
    key = f"{job.archive_uid}/{job.item}/{job.task}"
    return per_thread("profile", key, lambda: Archive(job.archive_url, job.storage_options).profile(job.item, job.task))


def check_key(actual: str, expected: str | None, source: str, index) -> str:
    if expected is not None and actual != expected:
        raise TTFTError(f"{source}: tile {list(index)} changed while it was being ingested")
    return actual


def tile_outcome(
    index, key: str, state: str, written: bool = False, record: TileRecord | None = None, slot=None
) -> dict:
    """What a tile task returns: small and JSON-friendly (never tensors), for logs, caches and tests.
    ``state``: coded, empty (nothing to code) or kept (the archive had this key already)."""
    outcome = {"index": [int(i) for i in index], "key": key, "state": state, "written": written}
    if record is not None:
        outcome |= {
            "bytes": len(record.data),
            "fidelity": record.fidelity,
            "ttft_steps": record.ttft_steps,
            "ttft_seconds": record.ttft_seconds,
            "ttft_slot": list(slot) if slot else None,
        }
    return outcome


def finish_ingest(
    archive_url: str, storage_options: dict | None, item: str, task: str, outcomes: list[dict], started: float
) -> dict:
    """Completion marker last, then the item's summary."""
    archive = Archive(archive_url, storage_options)
    archive.profile(item, task).mark_complete()
    written = sum(o["written"] for o in outcomes)
    return summarize(archive, item, task) | {"written_tiles": written, "seconds": time.perf_counter() - started}


def run_tiles(job, progress: Progress | None, started: float) -> dict:
    """Code a planned item's tiles in order in this thread (raster and DICOM alike), ``job.batch``
    at a time."""
    indices = list(np.ndindex(*TileGrid(**job.grid).shape))
    outcomes = []
    for batch in job_batches(job, [(index, None) for index in indices]):
        outcomes += encode_batch(job, batch)
        if progress:
            progress(len(outcomes), len(indices))
    return finish_ingest(job.archive_url, job.storage_options, job.item, job.task, outcomes, started)


def tiles_to_code(job) -> list[tuple[tuple[int, int, int], str]]:
    """(index, key) of every tile whose archived key differs from its source's: a rerun after a
    crash, or of the same thing, codes only what is missing."""
    profile = Archive(job.archive_url, job.storage_options).profile(job.item, job.task)
    todo = []
    for index, stored in zip(profile.indices(), profile.keys()):
        key = job.tile_key(index)
        if stored != key:
            todo.append((tuple(int(i) for i in index), key))
    return todo


def complete_profile(
    archive_url: str | Archive, item: str, task: str, kind: str, storage_options: dict | None = None
) -> tuple[Archive, dict, TileGrid, Profile]:
    """What a query of ``item`` reads from: the archive (opened here from its URL, or as given),
    the item's source metadata and grid, and its profile ``task``, which must be complete; the
    item must be of ``kind`` (raster, dicom)."""
    archive = archive_url if isinstance(archive_url, Archive) else Archive(archive_url, storage_options, create=False)
    attrs = archive.item(item)  # one read of the item's attributes for its source and grid
    meta, grid = attrs["source"], TileGrid(**attrs["grid"])
    if meta["kind"] != kind:
        what = "a raster" if kind == "raster" else "a DICOM series"
        raise TTFTError(f"item {item!r} is a {meta['kind']}, not {what}")
    profile = archive.profile(item, task)
    if not profile.complete:
        raise TTFTError(f"profile {item}/{task} is not complete: ingest it again to finish it")
    return archive, meta, grid, profile


def summarize(archive: Archive, item: str, task: str) -> dict:
    meta = archive.item(item)["source"]
    profile = archive.profile(item, task)
    figures = profile.figures()
    coded = figures["state"] == CODED
    pixels, samples, source_bytes = (raster if meta["kind"] == "raster" else dicom).source_size(meta)
    nbytes = int(figures["nbytes"].sum())
    # what the item keeps beside the tiles for every profile: a series' exactly kept pixels
    extra = pixel_exceptions.stored_bytes(archive.root, item) if meta["kind"] == "dicom" else 0
    return {
        "id": item,
        "profile": task,
        "codec": codec_label(profile.settings),
        "tiles": int(np.prod(profile.shape)),
        "coded_tiles": int(coded.sum()),
        "empty_tiles": int((figures["state"] == EMPTY).sum()),
        "bytes": nbytes,
        "exception_bytes": extra,
        "bpp": bits_per_pixel(nbytes + extra, pixels),
        "bits_per_sample": bits_per_pixel(nbytes + extra, samples),
        "ratio": compression_ratio(source_bytes, nbytes + extra),
        "fidelity_mean": float(np.nanmean(figures["fidelity"][coded])) if coded.any() else None,
        "ttft_steps": int(figures["ttft_steps"][coded].sum()),
        "ttft_seconds": float(figures["ttft_seconds"].sum()),
        # tiles TTFT left alone (flat, nothing to gain), when the profile tunes at all
        "ttft_skipped_tiles": int((figures["ttft_steps"][coded] == 0).sum()) if _tunes(profile.settings) else 0,
        "complete": profile.complete,
    }


def _tunes(settings: dict) -> bool:
    return any(coder.get("ttft") for coder in settings["coders"].values())


def codec_label(settings: dict) -> str:
    """The codec ids a profile uses, joined: what reports and output tags name."""
    return "+".join(coder["codec"] for coder in settings["coders"].values())


def decoders_for(settings: dict) -> dict[int, TileCodec]:
    """TileCodecs able to decode what a profile holds, by channel count (the archive names codec
    and adapter of each)."""
    return {int(channels): _decoder(coder) for channels, coder in settings["coders"].items()}


def _decoder(coder: dict) -> TileCodec:
    model = open_codec_by_id(coder["codec"])
    adapter = coder["adapter"]
    if adapter == codec_setup.ZERO_ADAPTER:
        attach_adapter(model, config=LoRAConfig(**coder.get("lora", {})))
    elif adapter:  # a stage-1 adapter from the store: the very tensors the archive names
        codec_setup.attach_stored_adapter(model, coder["codec"], adapter, coder["adapter_sha256"])
    codec = TileCodec(model, coder["codec"], adapter, s_step=coder["s_step"])
    if codec.codec_digest.hex() != coder["codec_sha256"]:
        raise TTFTError(f"codec {coder['codec']!r} here is not the one the archive was written with")
    if adapter and codec.adapter_digest.hex() != coder["adapter_sha256"]:
        raise TTFTError(f"adapter {adapter!r} here is not the one the archive was written with")
    return codec


def verify(archive_url: str, item: str | None = None, storage_options: dict | None = None) -> list[str]:
    """Every profile's completeness, tile records and index (Archive.verify), and its codec and
    adapter records against the weights present; returns one line per problem."""
    return Archive(archive_url, storage_options, create=False).verify(item, check_settings=decoders_for)


def listing(archive_url: str, storage_options: dict | None = None) -> list[dict]:
    archive = Archive(archive_url, storage_options, create=False)
    listed = []
    for item in archive.item_ids():
        meta = archive.item(item)["source"]
        source = raster.describe(meta) if meta["kind"] == "raster" else dicom.describe(meta)
        profiles = [summarize(archive, item, p) for p in archive.profile_names(item)]
        listed.append({"id": item, "kind": meta["kind"], "source": source, "profiles": profiles})
    return listed
