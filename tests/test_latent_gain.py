"""A latent gain folded into a codec's weights (the start of the higher gray16 rate points): the
same transforms code the tile on a finer step, in real bytes, and train-base starts from it."""

import json

import pytest
import torch

from ttft_archive.adapters import zoo
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


def test_train_base_starts_from_the_gained_weights_and_says_so(tmp_path, monkeypatch):
    from ttft_archive.flows.training.base_codec import TrainBaseJob, run

    from .test_stage1 import tiny_data

    monkeypatch.setenv("TTFT_ZOO_PATH", str(tmp_path / "zoo"))
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "none")
    torch.manual_seed(0)
    start = build(preset("hyperprior-small"))
    zoo.save_codec(tmp_path / "zoo", "start-q1", start, {"family": "rgb", "lambda": 0.01})
    job = TrainBaseJob(
        codec_id="start-q2",
        data=[str(tiny_data(tmp_path / "data"))],
        run_dir=str(tmp_path / "run"),
        steps=1,
        batch=2,
        crop=64,
        lr=1e-12,  # a step that moves nothing: the export is the start as gained
        init_gain=3.0,
        opt_in=True,
        export_to=str(tmp_path / "zoo"),
    )
    with pytest.raises(TTFTError, match="--init-gain scales the latents of --init-from"):
        run(job, log=lambda _: None)
    card = json.loads(run(job.model_copy(update={"init_from": "start-q1"}), log=lambda _: None).read_text())
    assert card["init_gain"] == 3.0 and card["init_from"] == "start-q1" and card["opt_in"] is True
    trained = zoo.load_codec(zoo.find_codec("start-q2"))
    assert torch.allclose(trained.g_a[-1].bias, 3.0 * start.g_a[-1].bias, rtol=1e-3, atol=1e-6)
