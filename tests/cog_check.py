"""The Cloud-Optimized GeoTIFF rules of GDAL's validate_cloud_optimized_geotiff.py, checked on the
file's own bytes (its TIFF directories), without GDAL: the main IFD right after the header (and
GDAL's structural metadata, if any), every level tiled, overviews internal and of decreasing size,
their IFDs in order and before the data, and the data of the smallest overview first and of the
full resolution last."""

from __future__ import annotations

import struct
from pathlib import Path

# TIFF field types: struct code, size
_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q", 17: "q"}
_SIZES = {"B": 1, "s": 1, "H": 2, "I": 4, "II": 8, "b": 1, "h": 2, "i": 4, "f": 4, "d": 8, "Q": 8, "q": 8}
NEW_SUBFILE, WIDTH, HEIGHT, COMPRESSION, PHOTOMETRIC = 254, 256, 257, 259, 262
PREDICTOR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, EXTRA_SAMPLES = 317, 322, 323, 324, 338


def directories(path: str | Path) -> tuple[list[tuple[int, dict]], bytes, bool]:
    """Each IFD's offset and tags (tag -> tuple of values, or text), the file's bytes, BigTIFF."""
    data = Path(path).read_bytes()
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    word = "Q" if big else "I"
    offset = struct.unpack(order + word, data[8:16] if big else data[4:8])[0]
    found = []
    while offset:
        count_fmt, entry = ("Q", 20) if big else ("H", 12)
        n = struct.unpack_from(order + count_fmt, data, offset)[0]
        start = offset + (8 if big else 2)
        tags = {}
        for i in range(n):
            e = start + i * entry
            tag, kind = struct.unpack_from(order + "HH", data, e)
            count = struct.unpack_from(order + word, data, e + 4)[0]
            code = _TYPES[kind]
            size = _SIZES[code] * count
            at = e + (12 if big else 8)
            if size > (8 if big else 4):
                at = struct.unpack_from(order + word, data, at)[0]
            raw = data[at : at + size]
            tags[tag] = raw.rstrip(b"\0").decode("latin1") if code == "s" else struct.unpack(order + code * count, raw)
        found.append((offset, tags))
        offset = struct.unpack_from(order + word, data, start + n * entry)[0]
    return found, data, big


def cog_errors(path: str | Path) -> list[str]:
    """What makes ``path`` not a COG, by GDAL's validator's rules; [] for a valid one."""
    errors = []
    path = Path(path)
    for sidecar in (".ovr", ".aux.xml", ".msk"):
        if Path(str(path) + sidecar).exists():
            errors.append(f"a {sidecar} file beside it: overviews, masks and metadata belong inside")
    ifds, data, big = directories(path)
    expected = 16 if big else 8
    pattern = b"GDAL_STRUCTURAL_METADATA_SIZE="
    if data[expected : expected + len(pattern)] == pattern:
        size = int(data[expected + len(pattern) : expected + len(pattern) + 6])
        header_len = len(pattern) + 6 + len(b" bytes\n")
        structural = data[expected + header_len : expected + header_len + size].decode("latin1")
        if "KNOWN_INCOMPATIBLE_EDITION=YES" in structural:
            errors.append("KNOWN_INCOMPATIBLE_EDITION=YES is declared in the file")
        expected += header_len + size
        expected += expected % 2
    if ifds[0][0] != expected:
        errors.append(f"the main IFD is at byte {ifds[0][0]}, not {expected}")
    # full resolution first, then reduced images; masks (NewSubfileType bit 2) are checked as levels too
    images = [(o, t) for o, t in ifds if not (t.get(NEW_SUBFILE, (0,))[0] & 4)]
    main, overviews = images[0], images[1:]
    for name, (_, tags) in [("main image", main)] + [(f"overview {i}", ov) for i, ov in enumerate(overviews)]:
        if TILE_WIDTH not in tags or TILE_OFFSETS not in tags:
            errors.append(f"the {name} is not tiled")
    sizes = [(t[WIDTH][0], t[HEIGHT][0]) for _, t in images]
    for i in range(1, len(sizes)):
        if sizes[i][0] > sizes[i - 1][0] or sizes[i][1] > sizes[i - 1][1]:
            errors.append(f"overview {i - 1} is larger than the level before it")
    offsets = [o for o, _ in images]
    if offsets != sorted(offsets):
        errors.append(f"the IFDs of the main image and overviews are not in increasing order: {offsets}")

    def first_block(tags: dict) -> int:
        return next((o for o in tags.get(TILE_OFFSETS, ()) if o), 0)

    data_offsets = [first_block(t) for _, t in images]
    if data_offsets[-1] and data_offsets[-1] < offsets[-1]:
        errors.append("the data of the smallest level comes before its IFD")
    for i in range(len(data_offsets) - 1):
        if data_offsets[i] and data_offsets[i + 1] and data_offsets[i] < data_offsets[i + 1]:
            level = "the main image" if i == 0 else f"overview {i - 1}"
            errors.append(f"the data of {level} comes before that of overview {i}")
    blocks = [o for _, t in ifds for o in t.get(TILE_OFFSETS, ()) if o]
    if blocks and max(o for o, _ in ifds) > min(blocks):
        errors.append("an IFD comes after image data (IFDs should all come first)")
    return errors
