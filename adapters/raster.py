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
import rasterio.shutil
import rasterio.transform
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ttft_archive.ttft_core.errors import TTFTError

SUPPORTED_DTYPES = ("uint8", "uint16", "int16")

# GDAL's block cache defaults to 5% of RAM and fills as a scene is read, so an ingest's memory
# would grow with the scene up to that bound; tiles are read once, a small cache is enough.
os.environ.setdefault("GDAL_CACHEMAX", "64")


@dataclass(frozen=True)
class RasterInfo:
    """A raster's geometry, data type and what its bands mean. The band meaning (tags, scales,
    offsets, units, colour interpretation) is None in an item stored before it was kept: a reader
    takes GDAL's defaults then."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]
    tags: dict[str, str] | None = None  # the dataset's metadata items (GDAL's default domain)
    band_tags: tuple[dict[str, str], ...] | None = None
    band_scales: tuple[float, ...] | None = None  # the source's own scale and offset of each band
    band_offsets: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    colorinterp: tuple[str, ...] | None = None  # rasterio ColorInterp names: red, gray, alpha...

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), as an item's attributes hold and compare them; the
        band meaning only where it was read."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        d["band_tags"] = [dict(t) for t in self.band_tags] if self.band_tags is not None else None
        return {k: v for k, v in d.items() if v is not None or k not in BAND_MEANING}

    @classmethod
    def from_dict(cls, d: dict) -> "RasterInfo":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})

    def select(self, bands: list[int]) -> "RasterInfo":
        """The same raster with only ``bands`` (0-based), in that order."""

        def pick(values):
            return None if values is None else tuple(values[i] for i in bands)

        return replace(
            self,
            count=len(bands),
            descriptions=tuple(self.descriptions[i] for i in bands),
            band_tags=pick(self.band_tags),
            band_scales=pick(self.band_scales),
            band_offsets=pick(self.band_offsets),
            units=pick(self.units),
            colorinterp=pick(self.colorinterp),
        )


# what an item stored before the band meaning was kept lacks (see RasterInfo)
BAND_MEANING = ("tags", "band_tags", "band_scales", "band_offsets", "units", "colorinterp")


def source_size(meta: dict) -> tuple[int, int, int]:
    """(pixels, band samples, bytes) of a stored raster's source, every band counted."""
    pixels = meta["width"] * meta["height"]
    samples = pixels * meta["count"]
    return pixels, samples, samples * np.dtype(meta["dtype"]).itemsize


def describe(meta: dict) -> dict:
    """What a user needs to ask for a region of a stored raster: its CRS, bounds (left, bottom,
    right, top in that CRS), shape, data type and bands (1-based: each band's description, else its
    colour interpretation; and the colour interpretation alone, where it was recorded)."""
    info = RasterInfo.from_dict(meta)
    bounds = rasterio.transform.array_bounds(info.height, info.width, Affine(*info.transform[:6]))
    left, bottom, right, top = bounds[0], bounds[1], bounds[2], bounds[3]
    stored = sorted(b for group in meta.get("band_groups", [[i + 1] for i in range(info.count)]) for b in group)
    colours = info.colorinterp or ("",) * info.count
    return {
        "crs": info.crs,
        "bounds": [left, bottom, right, top],
        "shape": [info.count, info.height, info.width],
        "dtype": info.dtype,
        "nodata": info.nodata,
        "bands": {str(b): band_label(info.descriptions[b - 1] or "", colours[b - 1]) for b in stored},
        "colorinterp": {str(b): colours[b - 1] for b in stored} if info.colorinterp else None,
    }


def band_label(description: str, colour: str) -> str:
    """A band as `ls` names it: its description, else its colour interpretation; a description
    followed by the colour interpretation where that names a colour or alpha and says something
    else (``nir (alpha)``, not ``B1 (gray)``)."""
    if not description or not colour:
        return description or colour
    if colour in ("undefined", "gray") or colour == description.lower():
        return description
    return f"{description} ({colour})"


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
            tags=dict(src.tags()),
            band_tags=tuple(dict(src.tags(b)) for b in src.indexes),
            band_scales=tuple(float(v) for v in src.scales),
            band_offsets=tuple(float(v) for v in src.offsets),
            units=tuple(u or None for u in src.units),
            colorinterp=tuple(c.name for c in src.colorinterp),
        )


RGB = ("red", "green", "blue")


def colour_band_mapping(colorinterp: tuple[str, ...] | None) -> dict[str, int] | None:
    """The band mapping (name -> 0-based band) that a raster's colour interpretation states: where
    exactly one band each is red, green and blue and every other band is undefined or gray, those
    three, and nir the first other band (when there is one). None otherwise (no colour
    interpretation, or one naming alpha, palette, another colour space or a colour twice)."""
    if not colorinterp or any(c not in RGB + ("undefined", "gray") for c in colorinterp):
        return None
    if any(colorinterp.count(c) != 1 for c in RGB):
        return None
    mapping = {c: colorinterp.index(c) for c in RGB}
    others = [i for i, c in enumerate(colorinterp) if c not in RGB]
    return mapping | ({"nir": others[0]} if others else {})


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


@dataclass
class Scan:
    """What one read of a raster tells: per-band minimum and maximum (nodata excluded), a sha256
    of all pixel data, and each tile's range per band for a tile side (the read's block unless asked)."""

    lo: list[float]
    hi: list[float]
    sha256: str
    tile_lo: np.ndarray  # (bands, tile rows, tile columns); inf where a band has no valid pixel
    tile_hi: np.ndarray  # -inf there


def scan(path: str | Path, block: int = 512, storage_options: dict | None = None, tile: int | None = None) -> Scan:
    """Read ``path`` in blocks, so that memory stays flat, for its value ranges and its digest."""
    info = raster_info(path, storage_options)
    ranges = _TileRanges(info, tile or block)
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
                ranges.add(a, np.ones(a.shape, bool) if info.nodata is None else a != info.nodata, top, left)
    lo, hi = ranges.lo.min(axis=(1, 2)), ranges.hi.max(axis=(1, 2))
    lo, hi = np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, 0)
    return Scan(lo.tolist(), hi.tolist(), h.hexdigest(), ranges.lo, ranges.hi)


class _TileRanges:
    """Each tile's per-band minimum and maximum over its valid pixels, gathered from blocks that
    need not line up with the tiles."""

    def __init__(self, info: RasterInfo, tile: int):
        shape = (info.count, -(-info.height // tile), -(-info.width // tile))
        self.tile, self.lo, self.hi = tile, np.full(shape, np.inf), np.full(shape, -np.inf)

    def add(self, a: np.ndarray, valid: np.ndarray, top: int, left: int) -> None:
        rows, r0 = self._starts(top, a.shape[1])
        cols, c0 = self._starts(left, a.shape[2])
        values = a.astype(np.float64)
        for out, missing, reduce in ((self.lo, np.inf, np.minimum), (self.hi, -np.inf, np.maximum)):
            part = reduce.reduceat(reduce.reduceat(np.where(valid, values, missing), rows, 1), cols, 2)
            here = out[:, r0 : r0 + len(rows), c0 : c0 + len(cols)]
            here[...] = reduce(here, part)

    def _starts(self, offset: int, length: int) -> tuple[list[int], int]:
        """Where each tile begins within a block at ``offset`` of ``length`` pixels, and the first one's index."""
        first = offset // self.tile
        return [max(0, t * self.tile - offset) for t in range(first, -(-(offset + length) // self.tile))], first


def tile_value_ranges(scan: Scan, offsets: list[float], scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Each scanned tile's per-band range in the item's [0, 1] (``to_unit``'s values), NaN where
    the band has no valid pixel in the tile."""
    found = np.isfinite(scan.tile_lo)
    lo = to_unit(np.where(found, scan.tile_lo, 0), offsets, scales)
    hi = to_unit(np.where(found, scan.tile_hi, 0), offsets, scales)
    return np.where(found, lo, np.nan), np.where(found, hi, np.nan)


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


# the tiles and overview levels of a query's output (a Cloud-Optimized GeoTIFF)
COG_BLOCK, COG_SMALL_BLOCK = 512, 256
LOSSLESS = {"compress": "deflate", "predictor": 2, "zlevel": 6}  # horizontal differencing: integer bands


def check_output_file(path: str | Path) -> None:
    """Refuse, before any work, a local output GeoTIFF path that cannot be written: a folder, or a
    file under a folder that cannot be made. (A URL is written locally and uploaded afterwards: see
    adapters.outputs; missing local folders are made.)"""
    text = str(path)
    if "://" in text:
        return
    if Path(text).is_dir():
        raise TTFTError(f"--out {text}: is a folder; a raster query writes one GeoTIFF file")
    check_writable_folder(Path(text).parent, text)


def check_writable_folder(folder: Path, out: str) -> None:
    """``folder`` exists and is writable, or can be made: its nearest existing parent is a
    writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TTFTError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise TTFTError(f"--out {out}: folder {existing} is not writable")


def write_geotiff(
    path: str | Path, array: np.ndarray, info: RasterInfo, window: Window, tags: dict, valid: np.ndarray | None = None
) -> None:
    """A Cloud-Optimized GeoTIFF of ``array`` (bands, rows, cols) placed at ``window`` of the
    source's grid: tiled, DEFLATE with a horizontal predictor, internal overviews (averaged) down to
    one tile, IFDs before the data and the smallest overview's data first. It carries the source's
    dataset and band tags, band descriptions, scales, offsets, units and colour interpretation
    (``info``), then ``tags``. Where the source had no nodata value but a mask, ``valid`` becomes
    the output's internal mask (with its overviews).

    Written as a tiled GeoTIFF in memory with its overviews, then copied with COPY_SRC_OVERVIEWS
    (what GDAL's COG driver does too, but that driver takes no PHOTOMETRIC: it marks a fourth byte
    band as alpha). PHOTOMETRIC is RGB only for red, green, blue (and alpha) bands, MINISBLACK
    otherwise; a band is alpha only where the source said so."""
    count, height, width = array.shape
    block = COG_BLOCK if min(width, height) > 2 * COG_BLOCK else COG_SMALL_BLOCK
    factors, f = [], 2
    while max(width, height) > block * (f // 2):  # until the smallest level fits one tile
        factors.append(f)
        f *= 2
    photometric, alpha, colours = _photometric(info.colorinterp, count)
    structure = {"tiled": True, "blockxsize": block, "blockysize": block, "photometric": photometric, "alpha": alpha}
    structure |= LOSSLESS | {"bigtiff": "if_safer"}
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": info.dtype,
        "crs": info.crs,
        "transform": rasterio.windows.transform(window, rasterio.Affine(*info.transform)),
        "nodata": info.nodata,
    }
    source_tags = dict(info.tags or {})
    source_tags.pop("OVR_RESAMPLING_ALG", None)
    own = {k: str(v) for k, v in tags.items()} | {"OVR_RESAMPLING_ALG": "AVERAGE"}
    # PAM off: everything in the file itself, no .aux.xml beside it
    with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_TIFF_INTERNAL_MASK=True), rasterio.MemoryFile() as memory:
        with memory.open(**profile, **structure) as tmp:
            tmp.write(array)
            if info.nodata is None and valid is not None and not valid.all():
                tmp.write_mask(np.where(valid.all(axis=0), 255, 0).astype(np.uint8))
            tmp.colorinterp = colours
            tmp.descriptions = info.descriptions
            tmp.update_tags(**source_tags | own)
            for b, band_tags in enumerate(info.band_tags or (), start=1):
                # statistics describe the source's pixels, not these
                kept = {k: v for k, v in band_tags.items() if not k.startswith("STATISTICS_")}
                if kept:
                    tmp.update_tags(b, **kept)
            if info.band_scales is not None:
                tmp.scales = info.band_scales
            if info.band_offsets is not None:
                tmp.offsets = info.band_offsets
            if info.units is not None:
                tmp.units = tuple(u or "" for u in info.units)
            if factors:
                tmp.build_overviews(factors, Resampling.average)
        with memory.open() as tmp:
            rasterio.shutil.copy(tmp, str(path), driver="GTiff", copy_src_overviews=True, **structure)


def _photometric(colorinterp: tuple[str, ...] | None, count: int) -> tuple[str, str, list[ColorInterp]]:
    """PHOTOMETRIC, ALPHA and each band's colour interpretation for an output of ``count`` bands
    whose source stated ``colorinterp`` (None: not recorded, gray then undefined)."""
    names = list(colorinterp) if colorinterp else ["gray"] + ["undefined"] * (count - 1)
    colours = [ColorInterp[n] for n in names]
    rgb = names[:3] == list(RGB) and count in (3, 4) and (count == 3 or names[3] == "alpha")
    photometric = "RGB" if rgb else "MINISBLACK"
    first_extra = 3 if rgb else 1  # TIFF's ALPHA marks the first extra sample
    alpha = "YES" if count > first_extra and names[first_extra] == "alpha" else "UNSPECIFIED"
    return photometric, alpha, colours


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
        back), with the source's description of those bands (their tags, scales, colours...)."""
        top, left = self.window.row_off - self.r0 * self.th, self.window.col_off - self.c0 * self.tw
        rows, cols = slice(top, top + self.window.height), slice(left, left + self.window.width)
        stored = sorted(b - 1 for g in self.meta["band_groups"] for b in g)
        return self.values[stored, rows, cols], self.valid[stored, rows, cols], self.info.select(stored)

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
