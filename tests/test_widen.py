"""A hyperprior codec widened from a narrower one: it codes as the narrow one did, in real bytes,
until training moves its new channels (train-base --size hyperprior --init-from a narrow point)."""

import json

import pytest
import torch

from ttft_archive.adapters import zoo
from ttft_archive.adapters.zoo import open_codec
from ttft_archive.ttft_core import TileCodec, TTFTError, build, preset
from ttft_archive.ttft_core.backbones import widen

from .test_zoo import save_start_codec, tiny_train_job


def widened(narrow):
    torch.manual_seed(1)
    wide = build(preset("hyperprior", narrow.config.channels))
    widen(wide, narrow)
    return wide.eval()


@pytest.mark.parametrize(
    "codec, channels, image", [("rgb-hyperprior-q3", 3, "kodak_crop"), ("gray16-hyperprior-q5", 1, "ct_crop")]
)
def test_a_widened_codec_codes_a_tile_as_the_narrow_one_did(codec, channels, image, request):
    tile = request.getfixturevalue(image)
    narrow, codec_id, _ = open_codec(codec, channels=channels)
    wide = widened(narrow)
    assert (wide.config.N, wide.config.M) == (128, 192) and (narrow.config.N, narrow.config.M) == (64, 96)
    small, large = TileCodec(narrow, codec_id), TileCodec(wide, codec_id)
    small_bytes, large_bytes = small.compress(tile), large.compress(tile)
    # the new channels are zero latents at the smallest scale: a byte or two of the hyper-latents
    assert abs(len(large_bytes) - len(small_bytes)) <= 4
    assert torch.allclose(large.decompress(large_bytes), small.decompress(small_bytes), atol=1e-5)


def test_training_reaches_the_new_channels(kodak_crop):
    narrow, _, _ = open_codec("rgb-hyperprior-q3")
    wide = widened(narrow).train()
    out = wide(kodak_crop[None])
    distortion = torch.mean((out["x_hat"] - kodak_crop[None]) ** 2)
    rate = sum(-torch.log2(likelihood).sum() for likelihood in out["likelihoods"].values())
    (rate / kodak_crop[0].numel() + 100 * distortion).backward()
    # the first layer's new output channels and the latents' new ones get a gradient
    assert wide.g_a[0].weight.grad[64:].abs().sum() > 0 and wide.g_a[-1].weight.grad[96:].abs().sum() > 0


def test_only_a_wider_hyperprior_of_the_same_channels_widens_one():
    narrow, _, _ = open_codec("rgb-hyperprior-q3")
    for model in (build(preset("hyperprior", 1)), build(preset("tic-small", 3))):
        with pytest.raises(TTFTError, match="does not widen"):
            widen(model, narrow)
    with pytest.raises(TTFTError, match="does not widen"):
        widen(build(preset("hyperprior-small", 3)), build(preset("hyperprior", 3)))  # narrower than its start


def test_train_base_starts_a_wider_codec_from_a_narrow_point(zoo_dir, tmp_path, kodak_crop):
    from ttft_archive.flows.training.base_codec import run

    _, start = save_start_codec(zoo_dir, 0)
    # a step that moves nothing: the export is the start as widened
    job = tiny_train_job(tmp_path, zoo_dir, size="hyperprior", lr=1e-12, init_from="start-q1")
    card = json.loads(run(job, log=lambda _: None).read_text())
    assert card["init_from"] == "start-q1" and card["backbone"]["N"] == 128 and card["backbone"]["M"] == 192
    trained = zoo.load_codec(zoo.find_codec("start-q2"))
    start.update()
    small, large = TileCodec(start.eval(), "start-q1"), TileCodec(trained, "start-q2")
    assert torch.allclose(
        large.decompress(large.compress(kodak_crop)), small.decompress(small.compress(kodak_crop)), atol=1e-3
    )
