"""Rasters through rasterio: metadata, lazy band windows, per-band value mapping, GeoTIFF output.

Windows are read one tile at a time, so memory does not grow with the scene.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.transform
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ttft_archive.ttft_core.errors import TTFTError

SUPPORTED_DTYPES = ("uint8", "uint16", "int16")

# GDAL's block cache defaults to 5% of RAM and fills as a scene is read, so an ingest's memory
# would grow with the scene up to that bound; tiles are read once, a small cache is enough.
os.environ.setdefault("GDAL_CACHEMAX", "64")


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["transform"] = list(self.transform)
        d["descriptions"] = list(self.descriptions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RasterInfo":
        known = {k: d[k] for k in cls.__dataclass_fields__}
        return cls(**known | {"transform": tuple(known["transform"]), "descriptions": tuple(known["descriptions"])})


def source_size(meta: dict) -> tuple[int, int, int]:
    """(pixels, band samples, bytes) of a stored raster's source, every band counted."""
    pixels = meta["width"] * meta["height"]
    samples = pixels * meta["count"]
    return pixels, samples, samples * np.dtype(meta["dtype"]).itemsize


def describe(meta: dict) -> dict:
    """What a user needs to ask for a region of a stored raster: its CRS, bounds (left, bottom,
    right, top in that CRS), shape, data type and bands (1-based, with their descriptions)."""
    info = RasterInfo.from_dict(meta)
    bounds = rasterio.transform.array_bounds(info.height, info.width, Affine(*info.transform[:6]))
    left, bottom, right, top = bounds[0], bounds[1], bounds[2], bounds[3]
    stored = sorted(b for group in meta.get("band_groups", [[i + 1] for i in range(info.count)]) for b in group)
    return {
        "crs": info.crs,
        "bounds": [left, bottom, right, top],
        "shape": [info.count, info.height, info.width],
        "dtype": info.dtype,
        "nodata": info.nodata,
        "bands": {str(b): info.descriptions[b - 1] or "" for b in stored},
    }


def _open(path: str | Path, storage_options: dict | None = None):
    """A local path through GDAL; a URL (s3://...) through fsspec, read lazily by byte ranges."""
    opener = None
    if "://" in str(path) and not str(path).startswith("file://"):
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(str(path), **(storage_options or {}))
        opener = fs  # rasterio 1.4 takes an fsspec filesystem and serves GDAL through it
    try:
        return rasterio.open(path, opener=opener)
    except (RasterioIOError, FileNotFoundError, OSError) as exc:
        raise TTFTError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None


def raster_info(path: str | Path, storage_options: dict | None = None) -> RasterInfo:
    with _open(path, storage_options) as src:
        dtypes = set(src.dtypes)
        if len(dtypes) != 1 or src.dtypes[0] not in SUPPORTED_DTYPES:
            raise TTFTError(
                f"{path}: band data type {', '.join(sorted(dtypes))} is not supported ({', '.join(SUPPORTED_DTYPES)})"
            )
        return RasterInfo(
            path=str(path),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs.to_string() if src.crs else None,
            transform=tuple(src.transform)[:6],
            nodata=src.nodata,
            descriptions=tuple(src.descriptions),
        )


def read_window(
    path: str | Path, window: Window | None = None, bands: list[int] | None = None, storage_options: dict | None = None
) -> np.ndarray:
    """(bands, rows, cols) in the file's dtype; ``bands`` are 1-based as in rasterio."""
    with WindowReader(path, storage_options) as reader:
        return reader.read(window, bands)[0]


class WindowReader:
    """One open dataset for many window reads: a remote source's header is fetched once."""

    def __init__(self, path: str | Path, storage_options: dict | None = None):
        self.path = path
        self.src = _open(path, storage_options)

    def read(self, window: Window | None, bands: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Values and where they are valid by GDAL's masks (the nodata value, an internal or
        sidecar mask band); (bands, rows, cols) each, ``bands`` 1-based."""
        try:
            return self.src.read(bands, window=window), self.src.read_masks(bands, window=window) > 0
        except RasterioIOError as exc:
            raise TTFTError(f"{self.path}: cannot read window {window} ({_gdal_reason(exc)})") from None

    def __enter__(self) -> "WindowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.src.close()


def scan(
    path: str | Path, block: int = 512, storage_options: dict | None = None
) -> tuple[list[float], list[float], str]:
    """Per-band minimum and maximum (nodata excluded) and a sha256 of all pixel data, read in
    blocks so that memory stays flat."""
    info = raster_info(path, storage_options)
    lo = np.full(info.count, np.inf)
    hi = np.full(info.count, -np.inf)
    h = hashlib.sha256()
    with _open(path, storage_options) as src:
        for top in range(0, info.height, block):
            for left in range(0, info.width, block):
                w = Window(left, top, min(block, info.width - left), min(block, info.height - top))
                try:
                    a = src.read(window=w)
                except RasterioIOError as exc:  # a truncated or damaged file: its header promised more
                    raise TTFTError(
                        f"{path}: pixels unreadable at row {top}, column {left}: the file is truncated or "
                        f"damaged ({_gdal_reason(exc)})"
                    ) from None
                h.update(a.tobytes())
                valid = np.ones(a.shape, bool) if info.nodata is None else a != info.nodata
                for b in range(info.count):
                    if valid[b].any():
                        lo[b] = min(lo[b], a[b][valid[b]].min())
                        hi[b] = max(hi[b], a[b][valid[b]].max())
    lo = np.where(np.isfinite(lo), lo, 0)
    hi = np.where(np.isfinite(hi), hi, 0)
    return lo.tolist(), hi.tolist(), h.hexdigest()


def _gdal_reason(exc: Exception) -> str:
    """GDAL's own first line for a failed read (rasterio's says only 'see previous exception')."""
    cause = exc.__cause__ or exc.__context__ or exc
    return (str(cause).strip().splitlines() or [type(exc).__name__])[0]


def value_mapping(dtype: str, lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """Per-band (offset, scale) so that (value - offset) / scale lies in [0, 1].

    uint8: 0 and 255. uint16: 0 and the band's maximum (many sensors use a fraction of 16 bits).
    int16: the band's minimum and range.
    """
    if dtype == "uint8":
        return [0.0] * len(lo), [255.0] * len(lo)
    if dtype == "uint16":
        return [0.0] * len(lo), [max(h, 1.0) for h in hi]
    return list(lo), [max(h - l, 1.0) for l, h in zip(lo, hi)]


def to_unit(a: np.ndarray, offsets: list[float], scales: list[float]) -> np.ndarray:
    o = np.asarray(offsets, np.float32)[:, None, None]
    s = np.asarray(scales, np.float32)[:, None, None]
    return np.clip((a.astype(np.float32) - o) / s, 0.0, 1.0)


def from_unit(x: np.ndarray, offsets: list[float], scales: list[float], dtype: str) -> np.ndarray:
    o = np.asarray(offsets, np.float64)[:, None, None]
    s = np.asarray(scales, np.float64)[:, None, None]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x.astype(np.float64) * s + o), info.min, info.max).astype(dtype)


def check_output_file(path: str | Path) -> None:
    """Refuse, before any work, an output GeoTIFF path that cannot be written: a URL (outputs are
    local files), a folder, or a file in a folder that does not exist."""
    text = str(path)
    if "://" in text:
        raise TTFTError(f"--out {text}: outputs are written to a local file, not to a URL")
    if Path(text).is_dir():
        raise TTFTError(f"--out {text}: is a folder; a raster query writes one GeoTIFF file")
    parent = Path(text).parent
    if not parent.is_dir():
        raise TTFTError(f"--out {text}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise TTFTError(f"--out {text}: folder {parent} is not writable")


def write_geotiff(
    path: str | Path, array: np.ndarray, info: RasterInfo, window: Window, tags: dict, valid: np.ndarray | None = None
) -> None:
    """A GeoTIFF of ``array`` (bands, rows, cols) placed at ``window`` of the source's grid. Where
    the source had no nodata value but a mask, ``valid`` becomes the output's internal mask."""
    transform = rasterio.windows.transform(window, rasterio.Affine(*info.transform))
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": info.dtype,
        "crs": info.crs,
        "transform": transform,
        "nodata": info.nodata,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        if info.nodata is None and valid is not None and not valid.all():
            dst.write_mask(np.where(valid.all(axis=0), 255, 0).astype(np.uint8))
        dst.descriptions = info.descriptions
        dst.update_tags(**{k: str(v) for k, v in tags.items()})


class Mosaic:
    """The window a query asks for, assembled from decoded tiles: each band group's tile mapped
    back to the source's values, with nodata restored where the source had it. Pixels of empty
    tiles and of bands that were not stored stay invalid."""

    def __init__(self, meta: dict, window: Window, tile_height: int, tile_width: int):
        self.meta, self.window, self.th, self.tw = meta, window, tile_height, tile_width
        self.info = RasterInfo.from_dict(meta)
        self.r0, self.c0 = window.row_off // tile_height, window.col_off // tile_width
        self.r1 = (window.row_off + window.height - 1) // tile_height
        self.c1 = (window.col_off + window.width - 1) // tile_width
        shape = (self.info.count, (self.r1 - self.r0 + 1) * tile_height, (self.c1 - self.c0 + 1) * tile_width)
        fill = self.info.nodata if self.info.nodata is not None else 0
        self.values = np.full(shape, fill, self.info.dtype)
        self.valid = np.zeros(shape, bool)

    def tiles(self) -> list[tuple[int, int, int]]:
        """(band group, row, col) of every tile under the window."""
        groups = range(len(self.meta["band_groups"]))
        rows, cols = range(self.r0, self.r1 + 1), range(self.c0, self.c1 + 1)
        return [(s, r, c) for s in groups for r in rows for c in cols]

    def place(self, index: tuple[int, int, int], x: np.ndarray, nodata_mask: bytes) -> None:
        """A decoded tile (bands, rows, cols in [0, 1]) of band group ``index[0]``, with its
        packed nodata mask."""
        s, r, c = index
        bands = self.meta["band_groups"][s]
        offsets = [self.meta["offsets"][b - 1] for b in bands]
        scales = [self.meta["scales"][b - 1] for b in bands]
        values = from_unit(x, offsets, scales, self.info.dtype)
        missing = unpack_missing(nodata_mask, values.shape)
        top, left = (r - self.r0) * self.th, (c - self.c0) * self.tw
        at = ([b - 1 for b in bands], slice(top, top + x.shape[1]), slice(left, left + x.shape[2]))
        self.values[at] = restore_nodata(values, missing, self.info.nodata)
        self.valid[at] = ~missing

    def window_arrays(self) -> tuple[np.ndarray, np.ndarray, RasterInfo]:
        """The window's values and validity over the stored bands (bands not ingested do not come
        back), with the source's description of those bands."""
        top, left = self.window.row_off - self.r0 * self.th, self.window.col_off - self.c0 * self.tw
        rows, cols = slice(top, top + self.window.height), slice(left, left + self.window.width)
        stored = sorted(b - 1 for g in self.meta["band_groups"] for b in g)
        info = replace(self.info, count=len(stored), descriptions=tuple(self.info.descriptions[i] for i in stored))
        return self.values[stored, rows, cols], self.valid[stored, rows, cols], info

    def pixels_read(self) -> int:
        """Source pixels (every band together) under the tiles read: what a rate per pixel divides by."""
        return (self.r1 - self.r0 + 1) * self.th * (self.c1 - self.c0 + 1) * self.tw


def bbox_window(info: RasterInfo, bbox: tuple[float, float, float, float], crs: str | None = None) -> Window:
    """The pixel window of a bounding box (in the raster's CRS, or in ``crs``), clipped to the raster."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    xmin, ymin, xmax, ymax = bbox
    if xmin >= xmax or ymin >= ymax:
        raise TTFTError(f"bbox {bbox} is empty: expected XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX")
    if crs and info.crs and crs != info.crs:
        try:
            xmin, ymin, xmax, ymax = transform_bounds(crs, info.crs, xmin, ymin, xmax, ymax)
        except Exception as exc:  # rasterio raises CRSError and several PROJ errors here
            raise TTFTError(f"cannot transform bbox from {crs} to {info.crs} ({exc})") from None
    w = from_bounds(xmin, ymin, xmax, ymax, rasterio.Affine(*info.transform))
    col0, row0 = max(int(np.floor(w.col_off)), 0), max(int(np.floor(w.row_off)), 0)
    col1 = min(int(np.ceil(w.col_off + w.width)), info.width)
    row1 = min(int(np.ceil(w.row_off + w.height)), info.height)
    if col1 <= col0 or row1 <= row0:
        raise TTFTError(f"bbox {bbox} does not intersect the raster")
    return Window(col0, row0, col1 - col0, row1 - row0)


def pack_missing(valid: np.ndarray) -> bytes:
    """Where a tile holds no valid data (per band), packed and deflated; b"" when it is all valid,
    so that the decoder can restore the gaps exactly (a learned codec blurs their edges)."""
    if valid.all():
        return b""
    return zlib.compress(np.packbits(~valid).tobytes(), 9)


def unpack_missing(packed: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if not packed:
        return np.zeros(shape, bool)
    bits = np.frombuffer(zlib.decompress(packed), np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def restore_nodata(values: np.ndarray, missing: np.ndarray, nodata: float | None) -> np.ndarray:
    """Nodata back where the source had it, and nowhere else: a decoded valid pixel that happens to
    equal the nodata value moves one step away from it, so it is not read as missing."""
    if nodata is None:
        return values
    mask = missing
    clash = ~mask & (values == nodata)
    step = 1 if nodata < np.iinfo(values.dtype).max else -1
    values[clash] = nodata + step
    values[mask] = nodata
    return values
