import pytest
import torch
from torch import nn

from ttft_archive.adapters.adapter_files import load_adapter, save_adapter
from ttft_archive.ttft_core import TTFTError, attach_adapter, build, lora

from .conftest import tiny_config

LAYERS = {
    "linear": (lambda: nn.Linear(12, 20), lambda: torch.randn(3, 12)),
    "conv2d": (lambda: nn.Conv2d(6, 10, 5, stride=2, padding=2), lambda: torch.randn(2, 6, 17, 13)),
    "convtranspose2d": (
        lambda: nn.ConvTranspose2d(10, 6, 5, stride=2, padding=2, output_padding=1),
        lambda: torch.randn(2, 10, 9, 7),
    ),
}


def wrapped(kind: str):
    make_layer, make_input = LAYERS[kind]
    torch.manual_seed(0)
    model = nn.Sequential(make_layer())
    base = nn.Sequential(make_layer())
    base.load_state_dict(model.state_dict())
    lora.inject(model, ["0"], "encoder", lora.LoRAConfig(rank=4, alpha=8))
    return model, base, make_input()


@pytest.mark.parametrize("kind", LAYERS)
def test_adapter_equals_base_while_s_is_zero(kind):
    model, base, x = wrapped(kind)
    assert isinstance(model[0], lora.SVDLoRA)
    assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("kind", LAYERS)
def test_update_is_low_rank_scaled_and_merges_back(kind):
    model, base, x = wrapped(kind)
    layer = model[0]
    with torch.no_grad():
        layer.lora_s.copy_(torch.tensor([0.5, -0.25, 0.125, 1.0]))
    delta = layer.delta_weight().reshape(layer.base_layer.weight.shape[0], -1)
    assert torch.linalg.matrix_rank(delta).item() == 4
    # orthonormal P and Q: the update's singular values are |s| * alpha / r
    sv = torch.linalg.svdvals(delta)[:4]
    assert torch.allclose(sv, torch.tensor([1.0, 0.5, 0.25, 0.125]) * 2.0, atol=1e-5)
    adapted = model(x)
    assert not torch.allclose(adapted, base(x))
    layer.merge()
    assert torch.allclose(model(x), adapted, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(layer.base_layer.weight, base[0].weight, atol=1e-6)
    assert torch.allclose(model(x), adapted, atol=1e-6)


def test_injection_needs_a_match_and_a_feasible_rank():
    with pytest.raises(TTFTError, match="no layer matches"):
        lora.inject(nn.Sequential(nn.Linear(4, 4)), ["nothing*"], "encoder")
    with pytest.raises(TTFTError, match="exceeds"):
        lora.inject(nn.Sequential(nn.Linear(3, 4)), ["0"], "encoder", lora.LoRAConfig(rank=4))


@pytest.mark.parametrize("backbone", ["hyperprior", "tic"])
def test_gradients_reach_exactly_the_stage_parameters(backbone, kodak_crop):
    model = attach_adapter(build(tiny_config(backbone, 3)))
    with torch.no_grad():  # move s off zero so that P and Q receive gradients too
        for _, layer in lora.lora_layers(model):
            layer.lora_s.fill_(0.1)
    x = kodak_crop[None, :, :64, :64]
    enc = {f"{n}.{p}" for n, _ in lora.lora_layers(model, "encoder") for p in ("lora_P", "lora_s", "lora_Q")}
    dec_s = {f"{n}.lora_s" for n, _ in lora.lora_layers(model, "decoder")}
    dec_pq = {f"{n}.{p}" for n, _ in lora.lora_layers(model, "decoder") for p in ("lora_P", "lora_Q")}
    expected = {"stage1": enc | dec_s | dec_pq, "ttft": enc | dec_s}
    for stage, names in expected.items():
        opened = set(lora.set_trainable(model, stage))
        assert opened == names
        model.zero_grad(set_to_none=True)
        model.train()
        out = model(x)
        loss = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) + out["x_hat"].square().sum()
        loss.backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got == names, f"{stage}: unexpected {sorted(got ^ names)[:3]}"


def test_tic_adapts_attention_linears_and_hyperprior_the_convolutions():
    tic = attach_adapter(build(tiny_config("tic", 3)))
    names = [n for n, _ in lora.lora_layers(tic)]
    assert names and all(n.endswith(("attn.qkv", "attn.proj")) for n in names)
    assert {n.split(".")[0] for n in names} == {"g_a", "g_s"}
    cnn = attach_adapter(build(tiny_config("hyperprior", 1)))
    kinds = {type(layer.base_layer) for _, layer in lora.lora_layers(cnn)}
    assert kinds == {nn.Conv2d, nn.ConvTranspose2d}
    assert not any(n.startswith(("h_a", "h_s")) for n, _ in lora.lora_layers(cnn))


def test_adapter_state_saves_and_loads_alone(tmp_path):
    model = attach_adapter(build(tiny_config("hyperprior", 3)))
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_s.uniform_(-1, 1)
    state = lora.adapter_state(model)
    assert all(".lora_" in k for k in state)
    save_adapter(tmp_path / "a.safetensors", state, {"task": "pixel"})
    other = attach_adapter(build(tiny_config("hyperprior", 3)))
    loaded, card = load_adapter(tmp_path / "a.safetensors")
    lora.load_adapter_state(other, loaded)
    assert card == {"task": "pixel"}
    for k, v in lora.adapter_state(other).items():
        assert torch.equal(v, state[k])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TTFTError, match="bad.safetensors"):
        load_adapter(tmp_path / "bad.safetensors")


def test_attach_adapter_stays_in_the_transforms_and_happens_once():
    from ttft_archive.ttft_core.backbones.base import LoRATargets

    model = build(tiny_config("hyperprior", 3))
    with pytest.raises(TTFTError, match="inside g_a"):
        attach_adapter(model, targets=LoRATargets(encoder=["h_a.0"], decoder=["g_s.0"]))
    narrow = attach_adapter(build(tiny_config("hyperprior", 3)), targets=LoRATargets(["g_a.0"], ["g_s.6"]))
    assert [n for n, _ in lora.lora_layers(narrow)] == ["g_a.0", "g_s.6"]
    with pytest.raises(TTFTError, match="already has an adapter"):
        attach_adapter(narrow)


@pytest.mark.parametrize("kind", LAYERS)
def test_per_tile_factors_give_each_row_its_own_adapter(kind):
    """Stacked factors (peft's mixed-adapter batch): row b of the batch meets tile b's update only,
    as the layer with tile b's factors as its own parameters gives it; a batch of one folds."""
    model, _, x = wrapped(kind)
    layer = model[0]
    x = x[:1]
    torch.manual_seed(1)
    own = lora.adapter_state(model)
    tiles = [{k: v + 0.1 * torch.randn_like(v) for k, v in own.items()} for _ in range(3)]
    alone = []
    for state in tiles:
        lora.load_adapter_state(model, state)
        alone.append(model(x))
    lora.load_adapter_state(model, own)
    bank = {k: torch.stack([t[k] for t in tiles]) for k in own}
    with lora.per_tile(model, bank):
        batched = model(torch.cat([x] * 3))
    assert torch.allclose(batched, torch.cat(alone), atol=1e-5)
    with lora.per_tile(model, {k: v[None] for k, v in tiles[0].items()}):  # in the parameters' layout
        assert torch.equal(model(x), alone[0])  # folded: the very arithmetic of the plain forward
    assert layer.tile_factors is None
    assert all(torch.equal(v, own[k]) for k, v in lora.adapter_state(model).items())  # its own left alone


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_a_grouped_convolution_per_tile_equals_the_loop(op):
    """The GPU's path (one grouped convolution) against the CPU's (one convolution per tile)."""
    torch.manual_seed(0)
    weight = torch.randn(3, 4, 6, 3, 3)  # per tile: (out, in) for a convolution, (in, out) transposed
    x = torch.randn(3, 6 if op == "conv2d" else 4, 9, 7)
    options = {"stride": 2, "padding": 1} | ({"output_padding": 1} if op == "conv_transpose2d" else {})
    fn = getattr(torch.nn.functional, op)
    grouped = lora._each_tile(fn, x, weight, True, **options)
    looped = lora._each_tile(fn, x, weight, False, **options)
    assert grouped.shape == looped.shape and torch.allclose(grouped, looped, atol=1e-5)


def test_per_tile_refuses_merged_layers_and_leaves_the_model_as_it_was():
    model, _, x = wrapped("conv2d")
    model[0].merge()
    with pytest.raises(TTFTError, match="merged"):
        with lora.per_tile(model, lora.adapter_state(model)):
            pass
    assert model[0].tile_factors is None
