import pytest
import torch

from ttft_archive.adapters.zoo import open_codec
from ttft_archive.ttft_core import TileCodec, TTFTConfig, TTFTError, attach_adapter, bitstream, finetune, lora
from ttft_archive.ttft_core.ttft_loss import mixed_forward

from .conftest import crop
from .test_bitstream import make_codec
from .test_checkerboard import grown_from


@pytest.mark.parametrize("backbone", ["hyperprior", "tic", "checkerboard"])
def test_finetune_keeps_the_best_state_by_copy_and_restores_the_codec(backbone, kodak_crop):
    codec = make_codec(backbone, 3)
    tile = crop(kodak_crop, 30, 40, 64, 96)
    before = codec.compress(tile)
    result = finetune(codec, tile, config=TTFTConfig(steps=6, lr=5e-2, milestones=(3,)))
    assert len(result.losses) == 6 and result.seconds > 0
    assert result.best_loss == min(result.losses) and result.losses[result.best_step] == result.best_loss
    # the codec is back at its stage-1 adapter, frozen, in eval mode
    assert codec.compress(tile) == before
    assert not any(p.requires_grad for p in codec.model.parameters()) and not codec.model.training
    if result.best_step > 0:
        moved = [k for k in result.state if not torch.equal(result.state[k], codec.stage1_state[k])]
        assert moved and all(k.startswith("g_a") or k.endswith("lora_s") for k in moved)
    # a copy: later changes to the model do not reach the returned state
    snapshot = {k: v.clone() for k, v in result.state.items()}
    with torch.no_grad():
        for _, layer in lora.lora_layers(codec.model):
            layer.lora_s.add_(1.0)
    assert all(torch.equal(snapshot[k], result.state[k]) for k in snapshot)


def test_tuned_state_codes_and_decodes(ct_crop):
    codec = make_codec("hyperprior", 1)
    tile = crop(ct_crop, 200, 150, 70, 90)
    result = finetune(codec, tile, config=TTFTConfig(steps=4, lr=5e-2))
    out = codec.decompress(codec.compress(tile, result.state))
    assert out.shape == tile.shape


def test_ttft_needs_an_adapter_and_a_step(kodak_crop):
    with pytest.raises(TTFTError, match="adapter"):
        finetune(make_codec("hyperprior", 3, adapter=False), kodak_crop[:, :64, :64])
    with pytest.raises(TTFTError, match="at least one step"):
        finetune(make_codec("hyperprior", 3), kodak_crop[:, :64, :64], config=TTFTConfig(steps=0))


def test_flat_tiles_are_not_tuned_and_a_plateau_stops_early(kodak_crop):
    codec = make_codec("hyperprior", 3)
    flat = torch.full((3, 64, 64), 0.25)
    result = finetune(codec, flat, config=TTFTConfig(steps=10))
    assert result.steps_run == 0 and result.skipped == "flat tile" and result.state is codec.stage1_state
    # lr 0 never improves on step 0: patience 2 stops after steps 0, 1, 2
    stalled = finetune(codec, crop(kodak_crop, 0, 0, 64, 64), config=TTFTConfig(steps=10, lr=1e-12, patience=2))
    assert stalled.steps_run <= 10 and stalled.steps_run - 1 - stalled.best_step <= 2


@pytest.mark.parametrize("backbone", ["hyperprior", "checkerboard"])
def test_the_cost_ttft_picks_on_is_what_the_coder_spends(backbone, kodak_crop):
    """Step 0 runs the stage-1 adapter: its cost must match the real bytes and the decoded tile,
    with either coder of y (the checkerboard's grown from the shipped hyperprior, context perturbed).

    The coded bits come from the entropy models' own distributions; the coder quantises scales to
    its table and flushes some bytes per string (8 allowed for each of y, z and s), hence the tolerances."""
    model, codec_id, _ = open_codec("rgb-hyperprior-q3", channels=3)
    if backbone == "checkerboard":
        model, codec_id = grown_from(model, context_std=0.01), "grown"
    codec = TileCodec(attach_adapter(model), codec_id, "zero")
    tile = crop(kodak_crop, 16, 16, 128, 128)
    config = TTFTConfig(steps=1, lmbda=400.0)
    result = finetune(codec, tile, config=config)
    data = codec.compress(tile)
    payload = bitstream.unpack(data)
    real_bits = 8 * sum(len(b) for b in (payload.y_bytes, payload.z_bytes, payload.s_bytes))
    task = config.lmbda * float(((codec.decompress(data) - tile) ** 2).mean())
    pixels = tile.shape[1] * tile.shape[2]
    assert result.losses[0] - task == pytest.approx(real_bits / pixels, rel=0.05, abs=3 * 64 / pixels)


def test_the_tuning_forward_reconstructs_what_the_decoder_will(kodak_crop):
    """Mixed quantisation: the synthesis sees rounded latents, so the reconstruction TTFT scores is
    the decoded tile (the coder's float64 entropy parameters may flip a rare rounding)."""
    model, codec_id, _ = open_codec("rgb-hyperprior-q3", channels=3)
    codec = TileCodec(attach_adapter(model), codec_id, "zero")
    tile = crop(kodak_crop, 0, 64, 128, 128)
    with torch.no_grad():
        _, x_hat = mixed_forward(codec.model, tile[None], [torch.Generator().manual_seed(0)])
        _, noisy_x_hat = mixed_forward(codec.model, tile[None], [torch.Generator().manual_seed(1)])
    decoded = codec.decompress(codec.compress(tile))
    assert float((x_hat[0].clamp(0, 1) - decoded).abs().mean()) < 1e-4
    assert torch.equal(x_hat, noisy_x_hat)  # the noise reaches the rates only
