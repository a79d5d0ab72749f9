"""Batched TTFT against one tile at a time, and warm starts.

Tolerances: a batch runs the same arithmetic as ``finetune`` but its convolutions see a batch of
tiles and a factored low-rank update, so sums are ordered differently: losses agree to about 1e-6
relative (measured at most 3e-6), checked at 1e-4. Adam divides each gradient by its running
RMS, so an element whose gradient is at rounding level can move differently by a sizeable
fraction of the learning rate; a state is therefore compared by how far it moved: the difference
between the two runs must stay within 1% of the distance the tile's adapter travelled (measured
at most 2e-4) and no element may differ by more than 5% of one step's learning rate (measured
0.6%)."""

import math

import pytest
import torch

from ttft_archive.adapters.zoo import open_codec
from ttft_archive.ttft_core import TileCodec, TTFTConfig, TTFTError, attach_adapter, finetune, lora
from ttft_archive.ttft_core.tasks import get_task
from ttft_archive.ttft_core.ttft import finetune_batch, learning_rates, zeroed

from .conftest import crop
from .test_bitstream import make_codec

CONFIG = TTFTConfig(steps=4, lr=5e-2, milestones=(2,), seed=11)


def assert_same_run(alone, batched, start: dict, lr: float) -> None:
    assert batched.steps_run == alone.steps_run and batched.best_step == alone.best_step
    assert batched.skipped == alone.skipped
    for a, b in zip(alone.losses, batched.losses):
        assert b == pytest.approx(a, rel=1e-4)
    assert batched.best_loss == pytest.approx(alone.best_loss, rel=1e-4)
    assert list(batched.state) == list(alone.state)
    for key, a in alone.state.items():
        b = batched.state[key]
        travelled = float((a - start[key]).norm())
        assert float((a - b).norm()) <= 1e-2 * travelled + 1e-7, key
        assert float((a - b).abs().max()) <= 0.05 * lr, key


def kodak_tiles(kodak_crop, size: int = 64) -> list[torch.Tensor]:
    return [
        crop(kodak_crop, 0, 0, size, size),
        crop(kodak_crop, 64, 128, size, size),
        crop(kodak_crop, 160, 32, size, size),
    ]


@pytest.mark.parametrize("backbone,sample", [("hyperprior", "kodak_crop"), ("tic", "landsat_crop")])
def test_a_batch_equals_tuning_each_tile_alone(backbone, sample, request):
    codec = make_codec(backbone, 3)
    tiles = kodak_tiles(request.getfixturevalue(sample))
    alone = [finetune(codec, t, config=CONFIG) for t in tiles]
    batched = finetune_batch(codec, tiles, config=CONFIG)
    for a, b in zip(alone, batched):
        assert_same_run(a, b, codec.stage1_state, CONFIG.lr)
        assert b.best_step >= 0 and not b.skipped
    # the encoder moved, and differently per tile: each tile really had its own adapter
    key = next(k for k in batched[0].state if k.startswith("g_a") and k.endswith("lora_s"))
    assert not torch.equal(batched[0].state[key], batched[1].state[key])
    # the codec is left as finetune leaves it: stage-1 adapter, its own layers, frozen
    assert all(isinstance(layer, lora.SVDLoRA) for _, layer in lora.lora_layers(codec.model))
    assert lora.adapter_state(codec.model).keys() == codec.stage1_state.keys()
    assert all(torch.equal(v, codec.stage1_state[k]) for k, v in lora.adapter_state(codec.model).items())
    assert not any(p.requires_grad for p in codec.model.parameters())


def test_a_shipped_codec_batch_matches_and_its_states_code_and_decode(kodak_crop):
    model, codec_id, _ = open_codec("rgb-hyperprior-q1", channels=3)
    attach_adapter(model)
    codec = TileCodec(model, codec_id, "zero")
    tiles = kodak_tiles(kodak_crop)[:2]
    config = TTFTConfig(steps=4, lr=5e-3, seed=2, lmbda=300.0)
    alone = [finetune(codec, t, config=config) for t in tiles]
    batched = finetune_batch(codec, tiles, config=config)
    assert any(b.best_step > 0 for b in batched)  # a tuned state, not the start, is coded below
    decoder_s = [f"{name}.lora_s" for name, _ in lora.lora_layers(codec.model, "decoder")]
    for tile, a, b in zip(tiles, alone, batched):
        assert_same_run(a, b, codec.stage1_state, config.lr)
        data = codec.compress(tile, b.state)
        out = codec.decompress(data)
        assert out.shape == tile.shape and float(((out - tile) ** 2).mean()) < 0.01
        # the decoder applied the batch's singular values, to the bitstream's step
        sent = torch.cat([b.state[k] for k in decoder_s])
        assert torch.allclose(lora.decoder_singular_values(codec.model), sent, atol=codec.s_step / 2 + 1e-6)
        assert abs(len(data) - len(codec.compress(tile, a.state))) <= 0.02 * len(data)


def test_each_tile_may_bring_its_own_task_loss(kodak_crop):
    """One batch, a different loss per tile (as a cross-band task's tiles each read their own other
    bands): each tile's run is the one finetune gives it with its loss."""
    codec = make_codec("hyperprior", 3)
    tiles = kodak_tiles(kodak_crop)[:2]
    losses = [get_task("pixel").loss, get_task("edges").loss]
    alone = [finetune(codec, t, loss, CONFIG) for t, loss in zip(tiles, losses)]
    batched = finetune_batch(codec, tiles, losses, CONFIG)
    for a, b in zip(alone, batched):
        assert_same_run(a, b, codec.stage1_state, CONFIG.lr)
    # not what the first loss alone would give the second tile
    assert batched[1].losses != finetune_batch(codec, tiles, losses[0], CONFIG)[1].losses
    with pytest.raises(TTFTError, match="1 task losses for 2 tiles"):
        finetune_batch(codec, tiles, losses[:1], CONFIG)


def test_a_flat_tile_is_skipped_and_leaves_the_others_alone(kodak_crop):
    codec = make_codec("hyperprior", 3)
    a, b = kodak_tiles(kodak_crop)[:2]
    flat = torch.full_like(a, 0.4)
    with_flat = finetune_batch(codec, [a, flat, b], config=CONFIG)
    without = finetune_batch(codec, [a, b], config=CONFIG)
    skipped = with_flat[1]
    assert skipped.skipped == "flat tile" and skipped.steps_run == 0 and skipped.state is codec.stage1_state
    assert math.isnan(skipped.best_loss)
    for x, y in zip([with_flat[0], with_flat[2]], without):
        assert x.losses == y.losses and all(torch.equal(x.state[k], y.state[k]) for k in x.state)
    only_flat = finetune_batch(codec, [flat], config=CONFIG)
    assert only_flat[0].skipped == "flat tile"


def test_each_tile_stops_on_its_own_plateau(kodak_crop, landsat_crop):
    codec = make_codec("hyperprior", 3)
    tiles = [crop(kodak_crop, 0, 0, 64, 64), crop(landsat_crop, 64, 64, 64, 64), crop(kodak_crop, 100, 150, 64, 64)]
    # the weight this case was built on: at higher ones batching's float rounding grows past 1e-4
    config = TTFTConfig(steps=10, lr=5e-2, milestones=(), patience=1, seed=4, lmbda=100.0)
    alone = [finetune(codec, t, config=config) for t in tiles]
    batched = finetune_batch(codec, tiles, config=config)
    # this configuration makes the tiles stop at different steps, so rows leave the batch mid-run
    assert len({r.steps_run for r in alone}) > 1 and min(r.steps_run for r in alone) < config.steps
    for a, b in zip(alone, batched):
        assert_same_run(a, b, codec.stage1_state, config.lr)


def test_bad_batches_raise(kodak_crop):
    codec = make_codec("hyperprior", 3)
    with pytest.raises(TTFTError, match="one shape"):
        finetune_batch(codec, [crop(kodak_crop, 0, 0, 64, 64), crop(kodak_crop, 0, 0, 64, 96)], config=CONFIG)
    with pytest.raises(TTFTError, match="3 channels"):
        finetune_batch(codec, [crop(kodak_crop, 0, 0, 64, 64)[:1]], config=CONFIG)
    with pytest.raises(TTFTError, match="adapter"):
        finetune_batch(make_codec("hyperprior", 3, adapter=False), [crop(kodak_crop, 0, 0, 64, 64)])
    with pytest.raises(TTFTError, match="2 warm-start states for 1 tiles"):
        finetune_batch(codec, [crop(kodak_crop, 0, 0, 64, 64)], init_states=[None, None])
    assert finetune_batch(codec, [], config=CONFIG) == []


def test_warm_start_begins_at_the_given_state_in_both_paths(kodak_crop):
    codec = make_codec("hyperprior", 3)
    left, right, other = kodak_tiles(kodak_crop)
    neighbour = finetune(codec, left, config=CONFIG).state
    # one step: the best (and only) state is the one the run started from
    first = finetune(codec, right, config=TTFTConfig(steps=1, seed=1), init_state=neighbour)
    assert all(torch.equal(first.state[k], neighbour[k]) for k in neighbour)
    warm = [finetune(codec, t, config=CONFIG, init_state=s) for t, s in [(right, neighbour), (other, None)]]
    batched = finetune_batch(codec, [right, other], config=CONFIG, init_states=[neighbour, None])
    assert_same_run(warm[0], batched[0], neighbour, CONFIG.lr)
    assert_same_run(warm[1], batched[1], codec.stage1_state, CONFIG.lr)
    cold = finetune(codec, right, config=CONFIG)
    assert cold.losses[0] != warm[0].losses[0]


def test_a_warm_start_state_must_keep_what_the_decoder_holds(kodak_crop):
    codec = make_codec("hyperprior", 3)
    tile = crop(kodak_crop, 0, 0, 64, 64)
    moved = {k: v.clone() for k, v in codec.stage1_state.items()}
    key = next(k for k in moved if k.startswith("g_s") and k.endswith("lora_P"))
    moved[key] += 0.01
    with pytest.raises(TTFTError, match="never transmits"):
        finetune(codec, tile, config=CONFIG, init_state=moved)
    with pytest.raises(TTFTError, match="never transmits"):
        finetune_batch(codec, [tile], config=CONFIG, init_states=[moved])
    partial = dict(list(codec.stage1_state.items())[1:])
    with pytest.raises(TTFTError, match="lacks 1 adapter tensors"):
        finetune(codec, tile, config=CONFIG, init_state=partial)


def test_a_seed_makes_finetune_repeatable_and_leaves_the_global_rng_alone(kodak_crop):
    codec = make_codec("hyperprior", 3)
    tile = crop(kodak_crop, 0, 0, 64, 64)
    torch.manual_seed(0)
    one = finetune(codec, tile, config=CONFIG)
    after = torch.rand(3)
    torch.manual_seed(0)
    two = finetune(codec, tile, config=CONFIG)
    assert one.losses == two.losses and torch.equal(after, torch.rand(3))
    other_seed = finetune(codec, tile, config=TTFTConfig(steps=4, lr=5e-2, milestones=(2,), seed=12))
    assert other_seed.losses[1:] != one.losses[1:]


@pytest.mark.parametrize("milestones", [(15, 25, 30, 35), (2, 2, 5), (0, 3)])
def test_learning_rates_follow_torch_multistep_lr(milestones):
    config = TTFTConfig(steps=40, lr=5e-3, milestones=milestones, gamma=0.3)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), config.gamma)
    expected = []
    for _ in range(config.steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert list(learning_rates(config)) == expected


def test_a_grouped_adapted_layer_is_refused_and_the_codec_left_whole(kodak_crop):
    codec = make_codec("hyperprior", 3)
    layers = dict(lora.lora_layers(codec.model))
    last = list(layers)[-1]
    layers[last].base_layer.groups = 2  # as a grouped convolution would say; checked before any swap
    with pytest.raises(TTFTError, match="ungrouped"):
        finetune_batch(codec, [crop(kodak_crop, 0, 0, 64, 64)], config=CONFIG)
    assert dict(lora.lora_layers(codec.model)) == layers


def test_a_tile_starts_from_the_bare_codec_when_the_adapter_codes_it_worse(kodak_crop):
    """An adapter that only hurts (s far from zero, as an unrelated task's can be for this one):
    both paths price the bare codec, start from it and record so; with base_start off they don't."""
    model, codec_id, _ = open_codec("rgb-hyperprior-q3", channels=3)
    attach_adapter(model)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_s.fill_(3.0)
    codec = TileCodec(model, codec_id, "hurtful")
    tiles = kodak_tiles(kodak_crop)[:2]
    config = TTFTConfig(steps=2, lr=5e-3, seed=4, lmbda=400.0)
    alone = [finetune(codec, t, config=config) for t in tiles]
    batched = finetune_batch(codec, tiles, config=config)
    plain = [
        finetune(codec, t, config=TTFTConfig(steps=2, lr=5e-3, seed=4, lmbda=400.0, base_start=False)) for t in tiles
    ]
    for a, b, p in zip(alone, batched, plain):
        assert a.started_from == b.started_from == "base" and p.started_from == "adapter"
        assert a.losses[0] < p.losses[0]
        assert_same_run(a, b, zeroed(codec.stage1_state), config.lr)
        encoder_s = next(k for k in a.state if k.startswith("g_a") and k.endswith("lora_s"))
        assert float(a.state[encoder_s].abs().max()) < 0.1  # tuned from zero, not from 3
