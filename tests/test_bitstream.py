import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttft_archive.ttft_core import BitstreamError, TileCodec, TTFTError, attach_adapter, bitstream, build, lora
from ttft_archive.ttft_core.metrics import psnr
from ttft_archive.ttft_core.value_window import LEVELS, MIN_WIDTH

from .conftest import ROOT, crop, tiny_config

CASES = [  # backbone, channels, sample fixture, tile height, width (none a multiple of 64)
    ("hyperprior", 3, "kodak_crop", 100, 130),
    ("hyperprior", 1, "ct_crop", 77, 200),
    ("tic", 3, "landsat_crop", 90, 45),
    ("tic", 1, "ct_crop", 130, 66),
    ("checkerboard", 3, "landsat_crop", 70, 129),
]


def make_codec(backbone: str, channels: int, adapter: bool = True, seed: int = 0) -> TileCodec:
    torch.manual_seed(seed)
    model = build(tiny_config(backbone, channels))
    if model.context is not None:  # a trained context: the second half's Gaussians depend on the first
        torch.nn.init.normal_(model.context.entropy_parameters[-1].weight, std=0.05)
    if adapter:
        attach_adapter(model)
        with torch.no_grad():  # a stage-1 adapter that is not the identity
            for _, layer in lora.lora_layers(model):
                layer.lora_s.uniform_(-0.2, 0.2)
    return TileCodec(model, f"tiny-{backbone}-c{channels}", "test-adapter" if adapter else None)


def tuned_state(codec: TileCodec) -> dict:
    state = {k: v.clone() for k, v in codec.stage1_state.items()}
    for k in state:
        if k.startswith("g_s") and k.endswith("lora_s"):
            state[k] += torch.linspace(-0.3, 0.3, state[k].numel())
    return state


@pytest.mark.parametrize("backbone,channels,sample,h,w", CASES)
def test_roundtrip_shapes_and_rate_is_the_byte_count(backbone, channels, sample, h, w, request):
    tile = crop(request.getfixturevalue(sample), 10, 20, h, w)
    codec = make_codec(backbone, channels)
    data = codec.compress(tile, tuned_state(codec))
    header = bitstream.unpack(data).header
    assert (header.channels, header.height, header.width) == (channels, h, w)
    assert header.padded_height % 64 == 0 and header.padded_width % 64 == 0
    assert header.s_count == codec.reference_s.numel() > 0
    out = codec.decompress(data)
    assert out.shape == tile.shape and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # the decoder really applied the transmitted singular values, quantised to the header's step
    expected = tuned_state(codec)
    sent = lora.decoder_singular_values(codec.model)
    want = torch.cat([expected[f"{n}.lora_s"] for n, _ in lora.lora_layers(codec.model, "decoder")])
    assert torch.allclose(sent, want, atol=header.s_step / 2 + 1e-6)
    assert not torch.equal(codec.decompress(codec.compress(tile)), out)


def test_same_tile_same_bytes_and_singular_values_cost_bytes(kodak_crop):
    codec = make_codec("hyperprior", 3)
    tile = crop(kodak_crop, 0, 0, 64, 64)
    plain = codec.compress(tile)
    assert codec.compress(tile) == plain
    tuned = codec.compress(tile, tuned_state(codec))
    assert len(tuned) > len(plain)  # moved singular values are not free
    base = make_codec("hyperprior", 3, adapter=False)
    assert bitstream.unpack(base.compress(tile)).header.adapter_id is None


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def test_every_flipped_byte_is_refused_with_one_clear_line(kodak_crop):
    codec = make_codec("hyperprior", 3)
    data = codec.compress(crop(kodak_crop, 0, 0, 64, 64))
    messages = set()
    for i in range(len(data)):
        with pytest.raises(BitstreamError) as err:
            codec.decompress(_flip(data, i))
        assert "\n" not in str(err.value)
        messages.add(str(err.value))
    assert any("magic" in m for m in messages) and any("version" in m for m in messages)
    assert any("checksum" in m for m in messages)
    with pytest.raises(BitstreamError, match="too short|truncated|checksum"):
        codec.decompress(data[: len(data) // 2])


def _with_crc(body: bytes) -> bytes:
    import google_crc32c

    return body + struct.pack("<I", google_crc32c.value(body))


def test_other_codec_or_adapter_is_refused_by_name(kodak_crop):
    codec = make_codec("hyperprior", 3)
    data = codec.compress(crop(kodak_crop, 0, 0, 64, 64))
    other_weights = make_codec("hyperprior", 3, seed=1)
    with pytest.raises(BitstreamError, match="coded by codec 'tiny-hyperprior-c3'"):
        other_weights.decompress(data)
    other_adapter = make_codec("hyperprior", 3)
    lora.load_adapter_state(other_adapter.model, tuned_state(other_adapter))
    other_adapter = TileCodec(other_adapter.model, other_adapter.codec_id, "test-adapter")
    with pytest.raises(BitstreamError, match="adapter 'test-adapter'"):
        other_adapter.decompress(data)
    # a well-formed stream from a newer format version is refused for its version, not its CRC
    newer = _with_crc(data[:4] + bytes([bitstream.VERSION + 1]) + data[5:-4])
    with pytest.raises(BitstreamError, match="version 3 is not supported"):
        codec.decompress(newer)


def test_a_value_window_travels_in_the_bitstream_and_restores_the_tile_range(landsat_crop):
    codec = make_codec("hyperprior", 3, adapter=False)
    windowed = TileCodec(codec.model, codec.codec_id, windowed=True)
    dark = crop(landsat_crop, 0, 0, 64, 96) * 0.5 + 0.1  # a sliver of [0, 1], as a scene stretch leaves it
    window = windowed.window_of(dark)
    lows, highs = dark.amin(dim=(1, 2)).tolist(), dark.amax(dim=(1, 2)).tolist()
    assert window is not None and all(lo / LEVELS <= v for lo, v in zip(window.low, lows))
    assert all(hi / LEVELS >= v for hi, v in zip(window.high, highs)) and max(highs) - min(lows) < 0.3
    assert torch.equal(window.stretch(dark).amax(dim=(1, 2)) > 0.95, torch.ones(3, dtype=torch.bool))
    data = windowed.compress(dark, window=window)
    header = bitstream.unpack(data).header
    assert data[4] == bitstream.WINDOWED and header.window == window
    # any codec decodes it back into the item's range, the window read from the bytes
    out = codec.decompress(data)
    assert out.shape == dark.shape and out.min() >= min(lows) - 0.02 and out.max() <= max(highs) + 0.02
    assert psnr(out, dark) > psnr(window.stretch(out).clamp(0, 1), dark)
    # a tile without a window keeps version 1, byte for byte what the codec wrote before windows
    assert codec.compress(dark)[4] == bitstream.PLAIN == 1
    assert windowed.window_of(torch.stack([torch.linspace(0, 1, 64 * 64).reshape(64, 64)] * 3)) is None
    # a nearly flat tile is stretched 16 times at most: its noise is not blown up to the whole range
    flat = torch.full((3, 64, 64), 0.999) - 0.002 * torch.rand(3, 64, 64)
    narrow = windowed.window_of(flat)
    assert all(hi - lo == MIN_WIDTH and hi == LEVELS for lo, hi in zip(narrow.low, narrow.high))
    assert narrow.stretch(flat).min() > 0.9 and (narrow.restore(narrow.stretch(flat)) - flat).abs().max() < 1e-6
    # a window that is not an interval, or of another channel count, is refused by name
    body = data[:-4]
    at = body.index(struct.pack("<B", 3) + struct.pack("<2H", window.low[0], window.high[0]))
    inverted = body[: at + 1] + struct.pack("<2H", window.high[0], window.low[0]) + body[at + 5 :]
    with pytest.raises(BitstreamError, match="is not an interval"):
        codec.decompress(_with_crc(inverted))
    with pytest.raises(BitstreamError, match="value window of 2 channels for 3"):
        codec.decompress(_with_crc(body[:at] + bytes([2]) + body[at + 1 :]))


def test_bad_tiles_are_user_errors(kodak_crop):
    codec = make_codec("hyperprior", 3)
    with pytest.raises(TTFTError, match="takes 3 channels"):
        codec.compress(kodak_crop[:1])
    with pytest.raises(TTFTError, match="finite"):
        codec.compress(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(TTFTError, match="channels, height, width"):
        codec.compress(kodak_crop[None])


DECODER = """
import hashlib, json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from tests.test_bitstream import make_codec
shas = {{}}
for backbone, path in {tiles!r}.items():
    out = make_codec(backbone, 3).decompress(open(path, "rb").read())
    shas[backbone] = hashlib.sha256(out.numpy().tobytes()).hexdigest()
print(json.dumps({{"shas": shas, "threads": torch.get_num_threads()}}))
"""

BACKBONES = ["hyperprior", "tic", "checkerboard"]


def decode_elsewhere(tiles: dict[str, str], threads: int) -> dict:
    """Each backbone's tile decoded in a fresh process (one for all: starting one costs seconds)."""
    code = DECODER.format(root=str(ROOT), threads=threads, tiles=tiles)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_backbone_decodes_bit_exactly_in_another_process_and_thread_count(landsat_crop, tmp_path):
    import hashlib

    torch.set_num_threads(2)
    tiles, here = {}, {}
    for backbone in BACKBONES:
        codec = make_codec(backbone, 3)
        data = codec.compress(crop(landsat_crop, 5, 7, 150, 190), tuned_state(codec))
        tiles[backbone] = str(tmp_path / f"{backbone}.bin")
        Path(tiles[backbone]).write_bytes(data)
        here[backbone] = hashlib.sha256(codec.decompress(data).numpy().tobytes()).hexdigest()
    one, two = decode_elsewhere(tiles, threads=1), decode_elsewhere(tiles, threads=2)
    assert (one["threads"], two["threads"]) == (1, 2)
    assert one["shas"] == two["shas"] == here


def test_shared_kodak_and_ct_series_round_trip(shared_data):
    from ttft_archive.adapters.dicom import read_hu
    from ttft_archive.adapters.image_files import read_rgb
    from ttft_archive.adapters.normalise import from_hu

    rgb = make_codec("hyperprior", 3, adapter=False)
    for name in ("kodim01.png", "kodim19.png"):  # landscape and portrait
        image = read_rgb(shared_data / "natural" / name)
        data = rgb.compress(image)
        assert rgb.decompress(data).shape == image.shape
    gray = make_codec("tic", 1)
    slice_ = from_hu(read_hu(shared_data / "medical" / "ct_lung_A0001" / "1-30.dcm"))[None]
    out = gray.decompress(gray.compress(slice_))
    assert out.shape == (1, 512, 512) and psnr(out, slice_) > 0
