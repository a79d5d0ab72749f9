"""The tile bitstream: one self-describing byte string per tile and task profile.

Layout (all integers little-endian), version 1:

    magic "TTFT" | version u8
    codec id (u16 length + UTF-8) | codec sha256 (32 bytes)
    adapter id (u16 length + UTF-8, empty when none) | adapter sha256 (32 bytes, zero when none)
    channels u8 | height u16 | width u16 | padded height u16 | padded width u16
    singular-value step f32 | singular-value scale index u8 | singular-value count u16
    z height u16 | z width u16
    [version 2 only: window count u8 | count x (low u16 | high u16)]
    singular-value bytes (u32 length + bytes) | z bytes (u32 + bytes) | y bytes (u32 + bytes)
    CRC32C of everything above (u32)

Version 2 adds a tile's value window (ttft_core.value_window): per channel the low and high
bounds, in steps of 1/65535, of the item's [0, 1] range that the tile was stretched from. A tile
without a window is written as version 1, byte for byte as before; a reader takes both.

Padding is edge replication to the bottom and right; the decoder crops it away. The length of
the whole byte string is the rate that every report uses.

The y bytes are one rANS stream in the order the codec's entropy model decodes them: the latents
in (C, H, W) order for a hyperprior codec; for a checkerboard codec the anchors first, then the
rest, each half in (C, H, W) order. The codec id and sha256 that every tile names say which; the
layout is the same, so the version does not move.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c

from .errors import BitstreamError
from .value_window import ValueWindow

MAGIC = b"TTFT"
VERSION = 2  # the newest this reader knows
PLAIN, WINDOWED = 1, 2  # the versions: without and with a value window
_NO_DIGEST = bytes(32)


@dataclass(frozen=True)
class TileHeader:
    codec_id: str
    codec_sha256: bytes
    adapter_id: str | None
    adapter_sha256: bytes
    channels: int
    height: int
    width: int
    padded_height: int
    padded_width: int
    s_step: float
    s_scale_index: int
    s_count: int
    z_shape: tuple[int, int]
    window: ValueWindow | None = None


@dataclass(frozen=True)
class TilePayload:
    header: TileHeader
    s_bytes: bytes
    z_bytes: bytes
    y_bytes: bytes


def pack(payload: TilePayload) -> bytes:
    h = payload.header
    for name, value in (
        ("height", h.height),
        ("width", h.width),
        ("padded height", h.padded_height),
        ("padded width", h.padded_width),
    ):
        if not 0 < value < 2**16:
            raise BitstreamError(f"tile {name} {value} does not fit the bitstream (1..65535)")
    if h.window is not None and len(h.window.low) != h.channels:
        raise BitstreamError(f"a value window of {len(h.window.low)} channels for a tile of {h.channels}")
    parts = [
        MAGIC,
        struct.pack("<B", PLAIN if h.window is None else WINDOWED),
        _pack_str(h.codec_id),
        h.codec_sha256,
        _pack_str(h.adapter_id or ""),
        h.adapter_sha256 if h.adapter_id else _NO_DIGEST,
        struct.pack("<BHHHH", h.channels, h.height, h.width, h.padded_height, h.padded_width),
        struct.pack("<fBH", h.s_step, h.s_scale_index, h.s_count),
        struct.pack("<HH", *h.z_shape),
        _pack_window(h.window),
        _pack_bytes(payload.s_bytes),
        _pack_bytes(payload.z_bytes),
        _pack_bytes(payload.y_bytes),
    ]
    body = b"".join(parts)
    return body + struct.pack("<I", google_crc32c.value(body))


def unpack(data: bytes) -> TilePayload:
    """Parse and check a tile byte string; any defect raises BitstreamError naming it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"a tile bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 1 + 4:
        raise BitstreamError(f"tile bitstream of {len(data)} bytes is too short to hold a header")
    if data[:4] != MAGIC:
        raise BitstreamError(f"not a tile bitstream: magic {data[:4]!r}, expected {MAGIC!r}")
    version = data[4]
    if version not in (PLAIN, WINDOWED):
        raise BitstreamError(f"tile bitstream version {version} is not supported (this reader knows 1 to {VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if google_crc32c.value(body) != crc:
        raise BitstreamError("tile bitstream checksum (CRC32C) mismatch: the bytes are corrupt or truncated")
    r = _Reader(body, 5)
    codec_id = r.string()
    codec_sha = r.take(32)
    adapter_id = r.string() or None
    adapter_sha = r.take(32)
    channels, height, width, ph, pw = r.unpack("<BHHHH")
    s_step, s_index, s_count = r.unpack("<fBH")
    z_shape = r.unpack("<HH")
    window = r.window(channels) if version == WINDOWED else None
    s_bytes, z_bytes, y_bytes = r.blob(), r.blob(), r.blob()
    if r.pos != len(body):
        raise BitstreamError(f"tile bitstream has {len(body) - r.pos} unexpected trailing bytes")
    header = TileHeader(
        codec_id,
        codec_sha,
        adapter_id,
        adapter_sha,
        channels,
        height,
        width,
        ph,
        pw,
        s_step,
        s_index,
        s_count,
        tuple(z_shape),
        window,
    )
    return TilePayload(header, s_bytes, z_bytes, y_bytes)


def payload_size(data: bytes) -> int:
    """Bytes of a tile's coded content (latents and singular values), its header and checksum left out."""
    p = unpack(data)
    return len(p.s_bytes) + len(p.z_bytes) + len(p.y_bytes)


def _pack_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) >= 2**16:
        raise BitstreamError(f"identifier of {len(raw)} bytes is too long for the bitstream")
    return struct.pack("<H", len(raw)) + raw


def _pack_window(window: ValueWindow | None) -> bytes:
    if window is None:
        return b""
    bounds = [v for pair in zip(window.low, window.high) for v in pair]
    return struct.pack(f"<B{len(bounds)}H", len(window.low), *bounds)


def _pack_bytes(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError("tile bitstream is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (n,) = self.unpack("<H")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError("tile bitstream holds an identifier that is not UTF-8") from None

    def window(self, channels: int) -> ValueWindow:
        (count,) = self.unpack("<B")
        if count != channels:
            raise BitstreamError(f"tile bitstream has a value window of {count} channels for {channels}")
        bounds = self.unpack(f"<{2 * count}H")
        return ValueWindow(bounds[0::2], bounds[1::2])

    def blob(self) -> bytes:
        (n,) = self.unpack("<I")
        return self.take(n)
