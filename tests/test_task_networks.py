"""User network tasks: a spec names module:callable, a weights file and feature layers."""

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from ttft_archive.adapters import task_networks
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core import tasks as core_tasks

from .conftest import crop
from .task_nets import tiny_features

NETWORK = "tests.task_nets:tiny_features"


def write_spec(folder, name, weights, network=NETWORK, features="stem, down", extra=""):
    path = folder / f"{name}.yaml"
    path.write_text(f"network: {network}\nweights: {weights}\nfeatures: {features}\nchannels: 3\n{extra}")
    return path


@pytest.fixture()
def net_weights(tmp_path):
    """A seeded tiny network and its weights in safetensors and in a tensors-only torch file."""
    torch.manual_seed(3)
    net = tiny_features()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, tmp_path / "tiny.safetensors")
    torch.save(state, tmp_path / "tiny.pt")
    return net


@pytest.fixture(autouse=True)
def forget_registered():
    before = set(core_tasks._REGISTERED)
    yield
    for name in set(core_tasks._REGISTERED) - before:
        core_tasks.unregister(name)


def test_network_task_loss_is_the_mean_feature_mse_of_the_named_layers(tmp_path, net_weights, kodak_crop):
    name = task_networks.register_spec_file(write_spec(tmp_path, "tiny-net", "tiny.safetensors"))
    task = core_tasks.get_task(name)
    x = crop(kodak_crop, 0, 0, 48, 48)[None]
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    noisy.requires_grad_(True)
    loss = task.loss(noisy, x)
    loss.backward()
    # the same figure computed by hand from the weights the file holds
    with torch.no_grad():
        stem_a, stem_b = net_weights.stem(noisy), net_weights.stem(x)
        down_a, down_b = net_weights.down(stem_a.relu()), net_weights.down(stem_b.relu())
        expected = (F.mse_loss(stem_a, stem_b) + F.mse_loss(down_a, down_b)) / 2
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert task.loss(x, x).item() == 0 and task.metric(x, x) == 0
    assert task.metric(noisy.detach(), x) > 0 and not task.higher_is_better
    assert task.params["layers"] == ["stem", "down"] and len(task.params["weights_sha256"]) == 64
    assert name in {t["name"] for t in core_tasks.describe_all()}


def test_torch_weights_load_tensors_only(tmp_path, net_weights, kodak_crop):
    x = crop(kodak_crop, 0, 0, 32, 32)
    from_pt = task_networks.build_task(task_networks.read_spec(write_spec(tmp_path, "pt-net", "tiny.pt")))
    from_st = task_networks.build_task(task_networks.read_spec(write_spec(tmp_path, "st-net", "tiny.safetensors")))
    y = x.flip(-1)
    assert from_pt.metric(y, x) == from_st.metric(y, x) > 0
    torch.save({"stem.weight": torch.zeros(1), "why": print}, tmp_path / "pickled.pt")  # a pickled callable
    with pytest.raises(TTFTError, match="pickled.pt: not a readable .pt weights file"):
        task_networks.build_task(task_networks.read_spec(write_spec(tmp_path, "bad", "pickled.pt")))


@pytest.mark.parametrize(
    "weights, network, features, needle",
    [
        ("garbage.safetensors", NETWORK, "stem", "garbage.safetensors: not a readable .safetensors"),
        ("missing.safetensors", NETWORK, "stem", "missing.safetensors: no such weights file"),
        ("tiny.safetensors", "tests.no_such_module:f", "stem", "cannot import 'tests.no_such_module'"),
        ("tiny.safetensors", "tests.task_nets:NOT_A_FACTORY", "stem", "has no callable 'NOT_A_FACTORY'"),
        ("tiny.safetensors", "tests.task_nets", "stem", "expected module:callable"),
        ("tiny.safetensors", NETWORK, "stem, head", "no submodule 'head'"),
        ("other.safetensors", NETWORK, "stem", "other.safetensors: weights do not fit the network"),
    ],
)
def test_bad_specs_give_one_cli_line(tmp_path, capsys, net_weights, weights, network, features, needle):
    from ttft_archive.flows.cli import main

    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all")
    save_file({"stem.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    spec = write_spec(tmp_path, "broken", weights, network, features)
    assert main(["tasks", "--task-spec", str(spec)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_spec_errors_name_the_file(tmp_path):
    (tmp_path / "x.yaml").write_text("network: a:b\nweights: w.safetensors\n")
    with pytest.raises(TTFTError, match="x.yaml: missing key 'features'"):
        task_networks.read_spec(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("network: a:b\nweights: w.safetensors\nfeatures: [a]\nlayers: [b]\n")
    with pytest.raises(TTFTError, match="y.yaml: unknown key 'layers'"):
        task_networks.read_spec(tmp_path / "y.yaml")
    (tmp_path / "z.yaml").write_text("name: a/b\nnetwork: a:b\nweights: w.safetensors\nfeatures: [a]\n")
    with pytest.raises(TTFTError, match="z.yaml: task name 'a/b' must be"):
        task_networks.read_spec(tmp_path / "z.yaml")
    with pytest.raises(TTFTError, match="hide the built-in"):
        task_networks.register_spec_file(write_spec(tmp_path, "edges", "w.safetensors"))


def test_task_folder_registers_specs_and_defers_a_broken_ones_error(tmp_path, monkeypatch, net_weights, capsys):
    from ttft_archive.flows.cli import main
    from ttft_archive.flows.jobs import task_catalog

    write_spec(tmp_path, "folder-net", "tiny.safetensors")
    write_spec(tmp_path, "folder-broken", "absent.safetensors")
    monkeypatch.setenv("TTFT_TASK_PATH", str(tmp_path))
    assert sorted(task_networks.register_user_tasks()) == ["folder-broken", "folder-net"]
    assert {"folder-broken", "folder-net"} <= set(task_catalog.known_tasks())  # the folder is read once
    assert core_tasks.get_task("folder-net").metric_name == "feature_nmse"
    with pytest.raises(TTFTError, match="absent.safetensors: no such weights file"):
        core_tasks.get_task("folder-broken")
    core_tasks.unregister("folder-broken")
    assert main(["tasks", "--json"]) == 0
    assert "folder-net" in capsys.readouterr().out
