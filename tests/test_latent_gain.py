"""A latent gain folded into a codec's weights (the start of the higher gray16 rate points): the
same transforms code the tile on a finer step, in real bytes (train-base starting from it:
test_zoo)."""

import pytest
import torch

from ttft_archive.adapters.zoo import open_codec
from ttft_archive.ttft_core import TileCodec, TTFTError, build, preset
from ttft_archive.ttft_core.backbones import grow_from_hyperprior
from ttft_archive.ttft_core.metrics import psnr

from .conftest import crop


def test_a_doubled_gain_codes_the_same_tile_on_a_finer_step(ct_crop):
    model, codec_id, _ = open_codec("gray16-hyperprior-q4", channels=1)
    tile = crop(ct_crop, 128, 128, 192, 256)
    gained = build(model.config)
    gained.load_state_dict(model.state_dict())
    gained.scale_latents(2.0)
    x = tile[None]
    with torch.no_grad():
        y, y2 = model.g_a(x), gained.g_a(x)
        assert torch.allclose(y2, 2 * y, rtol=1e-5, atol=1e-5)
        assert torch.allclose(gained.h_a(y2), model.h_a(y), rtol=1e-4, atol=1e-4)  # z as before
    plain, finer = TileCodec(model.eval(), codec_id), TileCodec(gained.eval(), "gained")
    plain_bytes, finer_bytes = plain.compress(tile), finer.compress(tile)
    assert len(finer_bytes) > 1.3 * len(plain_bytes)
    assert psnr(finer.decompress(finer_bytes), tile) > psnr(plain.decompress(plain_bytes), tile) + 0.4


def test_a_gain_is_refused_where_the_latents_feed_a_context(ct_crop):
    hyperprior, _, _ = open_codec("gray16-hyperprior-q1", channels=1)
    model = build(preset("checkerboard-small", 1))
    grow_from_hyperprior(model, hyperprior)
    with pytest.raises(TTFTError, match="without a checkerboard context"):
        model.scale_latents(2.0)
