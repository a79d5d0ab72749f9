"""A user's own network as a task: a YAML spec names an importable ``module:callable`` that returns
an ``nn.Module``, a weights file, and the layers whose features the task loss compares.

    # detector.yaml: the task's name is the file's stem unless `name:` says otherwise
    network: my_package.nets:build_detector   # called with `kwargs`, must return an nn.Module
    kwargs: {width: 32}
    weights: detector.safetensors             # relative to this file; or .pt/.pth (tensors only)
    features: [stem, stage1.block2]           # named submodules (model.named_modules())
    channels: 3                               # checked once with a forward pass on load

Weights are read with safetensors, or ``torch.load(weights_only=True)``: never unpickled.
Importing the module runs its code, which the user chose by naming it. The spec's folder is
searched for the module after the usual import path. Spec files found in the folders of
``TTFT_TASK_PATH`` (colon-separated) register under their names wherever flows run.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load as load_safetensors
from torch import nn

from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core import tasks as core_tasks

SPEC_KEYS = {"name", "network", "kwargs", "weights", "features", "channels", "description"}
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    network: str  # "module:callable"
    weights: Path
    features: list[str]
    channels: int | None = None
    kwargs: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""  # the spec file, or how the spec was given


def read_spec(path: str | Path) -> TaskSpec:
    """A task spec file, validated: every fault names the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TTFTError(f"{path}: no such task spec file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise TTFTError(f"{path}: not a readable YAML task spec ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TTFTError(f"{path}: a task spec is a YAML mapping with network, weights and features")
    unknown = sorted(set(data) - SPEC_KEYS)
    missing = [k for k in ("network", "weights", "features") if k not in data]
    if unknown or missing:
        raise TTFTError(f"{path}: " + (f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"))
    features = data["features"]
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise TTFTError(f"{path}: features must be a list of submodule names")
    if not isinstance(data.get("kwargs", {}), dict):
        raise TTFTError(f"{path}: kwargs must be a mapping")
    channels = data.get("channels")
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        raise TTFTError(f"{path}: channels must be a positive integer")
    name = str(data.get("name") or path.stem)
    if not TASK_NAME.fullmatch(name):  # it names archive profiles and adapter files
        raise TTFTError(f"{path}: task name {name!r} must be letters, digits, '.', '_' or '-'")
    weights = Path(str(data["weights"])).expanduser()
    return TaskSpec(
        name=name,
        network=str(data["network"]),
        weights=weights if weights.is_absolute() else path.parent / weights,
        features=features,
        channels=channels,
        kwargs=data.get("kwargs") or {},
        description=str(data.get("description", "")),
        source=str(path.resolve()),
    )


def import_network(target: str, kwargs: dict, search: Path | None = None) -> nn.Module:
    """Import ``module:callable`` and call it; ``search`` (the spec's folder) is tried last."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TTFTError(f"task network {target!r}: expected module:callable")
    added = search is not None and str(search) not in sys.path
    if added:
        sys.path.append(str(search))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TTFTError(f"task network {target!r}: cannot import {module_name!r} ({exc})") from None
    finally:
        if added:
            sys.path.remove(str(search))
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise TTFTError(f"task network {target!r}: {module_name} has no callable {attr!r}")
    try:
        network = factory(**kwargs)
    except TypeError as exc:
        raise TTFTError(f"task network {target!r}: calling it with {kwargs} fails ({exc})") from None
    if not isinstance(network, nn.Module):
        raise TTFTError(f"task network {target!r} returned {type(network).__name__}, not a torch nn.Module")
    return network


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256 of the file) from safetensors, or a tensors-only torch file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TTFTError(f"{path}: no such weights file") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            state = load_safetensors(data)
        elif suffix in (".pt", ".pth"):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            raise TTFTError(f"{path}: weights must be .safetensors, .pt or .pth")
    except TTFTError:
        raise
    except Exception as exc:  # safetensors and torch.load raise many types for a foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TTFTError(f"{path}: not a readable {suffix} weights file ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TTFTError(f"{path}: the weights file must hold a flat mapping of names to tensors")
    return state, hashlib.sha256(data).hexdigest()


def load_weights(network: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the network does not"
        raise TTFTError(f"{path}: weights do not fit the network: the file {what}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            need = tuple(expected[key].shape)
            raise TTFTError(f"{path}: {key!r} has shape {tuple(value.shape)}, the network needs {need}")
    network.load_state_dict(state)


def build_task(spec: TaskSpec) -> core_tasks.Task:
    network = import_network(spec.network, spec.kwargs, Path(spec.source).parent if spec.source else None)
    state, digest = read_weights(spec.weights)
    load_weights(network, state, spec.weights)
    params = {"network": spec.network, "weights": spec.weights.name, "weights_sha256": digest, "kwargs": spec.kwargs}
    return core_tasks.network_task(spec.name, network, spec.features, spec.channels, spec.description, params)


def register_spec(spec: TaskSpec) -> str:
    """Make the spec's task nameable (get_task builds it, with a fresh network, when asked)."""
    core_tasks.register(spec.name, lambda **_: build_task(spec), spec.source)
    return spec.name


def register_spec_file(path: str | Path) -> str:
    return register_spec(read_spec(path))


def task_folders() -> list[Path]:
    return [Path(p) for p in os.environ.get("TTFT_TASK_PATH", "").split(":") if p]


def register_user_tasks() -> list[str]:
    """Every ``*.yaml`` spec in the TTFT_TASK_PATH folders; returns their names. A spec that does
    not read registers under its file's stem and raises its one-line error when that task is asked
    for, so one broken file does not stop every other command."""
    names = []
    for path in (f for folder in task_folders() for f in sorted(Path(folder).glob("*.yaml"))):
        try:
            names.append(register_spec_file(path))
        except TTFTError as exc:
            try:
                core_tasks.register(path.stem, _raiser(exc), str(path.resolve()))
                names.append(path.stem)
            except TTFTError:  # its name is taken (a built-in, another spec): nothing to defer to
                warnings.warn(f"task spec ignored: {exc}", stacklevel=2)
    return names


def _raiser(exc: TTFTError):
    def fail(**_):
        raise TTFTError(str(exc))

    return fail
