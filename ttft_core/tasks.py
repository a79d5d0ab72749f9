"""Tasks: a frozen, differentiable function of the image, the loss TTFT minimises on it, and the
metric a report quotes. Built-ins need no downloaded weights.

Every task sees images as the codec does, (B, C, H, W) in [0, 1]; what a [0, 1] value means in
physical units (Hounsfield units, reflectance) comes from the task's parameters, which the
configuration sets from the archive's normalisation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import TTFTError
from .metrics import psnr

# The CT mapping used everywhere: (HU + 1024) / 4095 over HU clipped to [-1024, 3071], which
# keeps the 12 bits a CT scanner stores. adapters.normalise applies it to files.
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    features: Callable[[Tensor], Tensor]
    metric_name: str
    metric: Callable[[Tensor, Tensor], float]  # (reconstruction, original) -> figure
    higher_is_better: bool = True
    params: dict = field(default_factory=dict)
    # a task whose features are several tensors (a network's layers) brings its own loss
    feature_loss: Callable[[Tensor, Tensor], Tensor] | None = None
    # the metric is a ratio of pixel counts (IoU, Dice): over a set of images it is taken on all of
    # them at once, not averaged per image, where an image without the class scores 1 or 0 on a
    # single stray pixel (Dice over a CT volume, IoU over a scene set)
    pooled: bool = False
    # the share of the codec's own trade-off (lambda * 255^2, set for the MSE of [0, 1] values) that
    # TTFT gives this task's loss. A CT window's loss is the MSE on HU stretched by range/width, so
    # at the full trade-off TTFT valued W350 window quality 137 times higher than the codec was
    # trained to: refining the latents then doubled the low points' rate and fell under the
    # stage-1 curve. (width/range)^2 undoes the stretch (docs/method.md, the CT windows).
    # Stage-1 training keeps the full weight: adapters trained at this one started TTFT worse.
    lambda_scale: float = 1.0

    def loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """MSE between the task's features of the reconstruction and of the original: no labels."""
        if self.feature_loss is not None:
            return self.feature_loss(x_hat, x)
        with torch.no_grad():
            target = self.features(x)
        return F.mse_loss(self.features(x_hat), target)


def _batch(x: Tensor) -> Tensor:
    return x if x.dim() == 4 else x[None]


# ---- generic ----
def _sobel(x: Tensor) -> Tensor:
    x = _batch(x)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device) / 4
    kernel = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    return torch.sqrt(g[:, 0::2] ** 2 + g[:, 1::2] ** 2 + 1e-12)


def _feature_psnr(features: Callable[[Tensor], Tensor], peak: float = 1.0) -> Callable[[Tensor, Tensor], float]:
    return lambda x_hat, x: psnr(features(_batch(x_hat)), features(_batch(x)), peak)


def pixel() -> Task:
    return Task("pixel", "pixel fidelity (PSNR)", _batch, "psnr_db", _feature_psnr(_batch))


def edges() -> Task:
    return Task(
        "edges", "gradient magnitude (Sobel), PSNR of the edge maps", _sobel, "edge_psnr_db", _feature_psnr(_sobel)
    )


# ---- satellite spectral indices ----
def _normalized_difference(a: int, b: int, scales: tuple[float, ...]) -> Callable[[Tensor], Tensor]:
    """(A - B) / (A + B) on physical values: the [0, 1] codec values times each band's scale."""

    def index(x: Tensor) -> Tensor:
        x = _batch(x)
        if x.shape[1] <= max(a, b):
            raise TTFTError(f"a spectral index over bands {a} and {b} needs {max(a, b) + 1} channels, got {x.shape[1]}")
        va, vb = x[:, a] * scales[a], x[:, b] * scales[b]
        return ((va - vb) / (va + vb).clamp_min(1e-6))[:, None]

    return index


def _soft_mask(feature: Callable[[Tensor], Tensor], threshold: float, softness: float, above: bool):
    sign = 1.0 if above else -1.0
    return lambda x: torch.sigmoid(sign * (feature(x) - threshold) / softness)


def _iou(mask: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], float]:
    def iou(x_hat: Tensor, x: Tensor) -> float:
        a, b = mask(_batch(x_hat)) > 0.5, mask(_batch(x)) > 0.5
        union = (a | b).sum().item()
        return 1.0 if union == 0 else (a & b).sum().item() / union

    return iou


def _mae(feature: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], float]:
    return lambda x_hat, x: (feature(_batch(x_hat)) - feature(_batch(x))).abs().mean().item()


def _bands(bands: dict[str, int], needed: tuple[str, ...], task: str) -> list[int]:
    missing = [b for b in needed if b not in bands]
    if missing:
        raise TTFTError(f"task {task!r} needs bands {', '.join(needed)}; the band mapping lacks {', '.join(missing)}")
    return [bands[b] for b in needed]


def _index_task(name: str, first: str, second: str, bands: dict[str, int], scales) -> Task:
    """(first - second) / (first + second) as a task, reported as mean absolute error."""
    a, b = _bands(bands, (first, second), name)
    f = _normalized_difference(a, b, scales or (1.0,) * (max(bands.values()) + 1))
    what = f"{name.upper()} ({first} - {second}) / ({first} + {second}), mean absolute error"
    return Task(name, what, f, f"{name}_mae", _mae(f), False, {"bands": bands})


def ndvi(bands: dict[str, int], scales: tuple[float, ...] | None = None) -> Task:
    return _index_task("ndvi", "nir", "red", bands, scales)


def ndwi(bands: dict[str, int], scales: tuple[float, ...] | None = None) -> Task:
    return _index_task("ndwi", "green", "nir", bands, scales)


def water(bands: dict[str, int], scales: tuple[float, ...] | None = None, threshold: float = 0.0) -> Task:
    mask = _soft_mask(ndwi(bands, scales).features, threshold, 0.05, above=True)
    return Task(
        "water",
        f"water mask NDWI > {threshold}, IoU",
        mask,
        "water_iou",
        _iou(mask),
        params={"bands": bands},
        pooled=True,
    )


def vegetation(bands: dict[str, int], scales: tuple[float, ...] | None = None, threshold: float = 0.3) -> Task:
    mask = _soft_mask(ndvi(bands, scales).features, threshold, 0.05, above=True)
    return Task(
        "vegetation",
        f"vegetation mask NDVI > {threshold}, IoU",
        mask,
        "vegetation_iou",
        _iou(mask),
        params={"bands": bands},
        pooled=True,
    )


# ---- CT ----
def _to_hu(x: Tensor) -> Tensor:
    return _batch(x) * (HU_MAX - HU_MIN) + HU_MIN


def _ct_window(width: float, level: float) -> Callable[[Tensor], Tensor]:
    lo = level - width / 2
    return lambda x: ((_to_hu(x) - lo) / width).clamp(0, 1)


def _dice(mask: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], float]:
    def dice(x_hat: Tensor, x: Tensor) -> float:
        a, b = mask(_batch(x_hat)) > 0.5, mask(_batch(x)) > 0.5
        total = a.sum().item() + b.sum().item()
        return 1.0 if total == 0 else 2 * (a & b).sum().item() / total

    return dice


def ct_window(name: str, width: float, level: float) -> Task:
    f = _ct_window(width, level)
    return Task(
        name,
        f"CT window W{width:g}/L{level:g}, PSNR inside the window",
        f,
        "window_psnr_db",
        _feature_psnr(f),
        params={"width": width, "level": level},
        lambda_scale=(width / (HU_MAX - HU_MIN)) ** 2,
    )


def ct_mask(name: str, threshold_hu: float, above: bool, softness_hu: float = 50.0) -> Task:
    mask = _soft_mask(lambda x: _to_hu(x), threshold_hu, softness_hu, above)
    how = ">" if above else "<"
    return Task(
        name,
        f"CT mask HU {how} {threshold_hu:g} (soft threshold), Dice",
        mask,
        "dice",
        _dice(mask),
        params={"threshold_hu": threshold_hu},
        pooled=True,
    )


# ---- a user's own network ----
class FeatureTap:
    """Runs a frozen network and returns what the named submodules output (forward hooks), in the
    order named. The network is put in eval mode and its parameters stop asking for gradients;
    gradients still flow through it to the image."""

    def __init__(self, network: nn.Module, layers: list[str]):
        if not layers:
            raise TTFTError("a network task needs at least one feature layer")
        modules = dict(network.named_modules())
        missing = [name for name in layers if name not in modules or not name]
        if missing:
            known = ", ".join(n for n in modules if n)[:300]
            raise TTFTError(f"the task network has no submodule {missing[0]!r}; it has: {known}")
        self.network = network.eval().requires_grad_(False)
        self.layers = list(layers)
        self._outputs: dict[str, Tensor] = {}
        for name in self.layers:
            modules[name].register_forward_hook(self._keeper(name))
        home = next(network.parameters(), torch.empty(0)).device
        # a copy per other device (a tile tuned on a GPU), made once: the hooks travel with it
        self._networks = {home: self.network}

    def _keeper(self, name: str):
        def keep(_module, _inputs, output):
            if not isinstance(output, Tensor):
                raise TTFTError(f"task network layer {name!r} returns {type(output).__name__}, not a tensor")
            self._outputs[name] = output

        return keep

    def __call__(self, x: Tensor) -> list[Tensor]:
        if x.device not in self._networks:
            self._networks[x.device] = copy.deepcopy(self.network).to(x.device)
        self._outputs.clear()
        self._networks[x.device](_batch(x))
        found = [self._outputs.get(name) for name in self.layers]
        self._outputs.clear()  # hold no activations between calls
        if any(f is None for f in found):
            raise TTFTError(f"task network layer {self.layers[found.index(None)]!r} did not run")
        return found


def _layer_mse(tap: FeatureTap) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean over layers of the features' MSE: every named layer weighs the same, whatever its size."""

    def loss(x_hat: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            targets = tap(x)
        return torch.stack([F.mse_loss(a, b) for a, b in zip(tap(x_hat), targets)]).mean()

    return loss


def _layer_nmse(tap: FeatureTap) -> Callable[[Tensor, Tensor], float]:
    """Mean over layers of MSE / variance of the original's features: 0 is perfect, 1 is no better
    than the features' mean, whatever scale the network's features have."""

    @torch.no_grad()
    def nmse(x_hat: Tensor, x: Tensor) -> float:
        pairs = zip(tap(x_hat), tap(x))
        return float(sum((F.mse_loss(a, b) / b.var().clamp_min(1e-12)).item() for a, b in pairs) / len(tap.layers))

    return nmse


def network_task(
    name: str,
    network: nn.Module,
    layers: list[str],
    channels: int | None = None,
    description: str = "",
    params: dict | None = None,
) -> Task:
    """A frozen network as a task: the loss is the MSE between the named layers' outputs on the
    reconstruction and on the original (the paper's feature loss), the report their normalised MSE.
    With ``channels``, one forward pass on a small image checks now that the layers produce tensors."""
    tap = FeatureTap(network, layers)
    if channels is not None:
        try:
            with torch.no_grad():
                tap(torch.rand(1, channels, 64, 64, generator=torch.Generator().manual_seed(0)))
        except TTFTError:
            raise
        except Exception as exc:  # whatever a foreign network raises on an input it cannot take
            raise TTFTError(f"task {name!r}: the network fails on a {channels}-channel 64x64 image ({exc})") from None

    def features(x: Tensor) -> Tensor:
        return torch.cat([f.flatten(1) for f in tap(x)], dim=1)

    what = description or f"features of {', '.join(layers)}, normalised MSE"
    return Task(
        name,
        what,
        features,
        "feature_nmse",
        _layer_nmse(tap),
        higher_is_better=False,
        params=dict(params or {}, layers=list(layers)),
        feature_loss=_layer_mse(tap),
    )


# ---- the registry the CLI and configs use ----
DEFAULT_BANDS = {"blue": 0, "green": 1, "red": 2, "nir": 3}

BUILTIN: dict[str, Callable[..., Task]] = {
    "pixel": lambda **_: pixel(),
    "edges": lambda **_: edges(),
    "ndvi": lambda bands=None, scales=None, **_: ndvi(bands or DEFAULT_BANDS, scales),
    "ndwi": lambda bands=None, scales=None, **_: ndwi(bands or DEFAULT_BANDS, scales),
    "water": lambda bands=None, scales=None, **_: water(bands or DEFAULT_BANDS, scales),
    "vegetation": lambda bands=None, scales=None, **_: vegetation(bands or DEFAULT_BANDS, scales),
    "ct-lung-window": lambda **_: ct_window("ct-lung-window", 1400, -700),
    "ct-mediastinum-window": lambda **_: ct_window("ct-mediastinum-window", 350, 40),
    "ct-lung-mask": lambda **_: ct_mask("ct-lung-mask", -400, above=False),
    "ct-bone-mask": lambda **_: ct_mask("ct-bone-mask", 300, above=True),
}


# Tasks that outer layers add (a user's network from a task spec file): name -> (factory, source).
# ttft_core only holds them; reading spec files and importing networks happens in adapters.
_REGISTERED: dict[str, tuple[Callable[..., Task], str]] = {}


def register(name: str, factory: Callable[..., Task], source: str) -> None:
    """Make ``name`` resolvable by get_task; ``source`` (a spec file, say) says where it came from.
    Registering the same name from the same source again is a no-op."""
    if name in BUILTIN:
        raise TTFTError(f"task {name!r} ({source}) would hide the built-in task of that name")
    if name in _REGISTERED and _REGISTERED[name][1] != source:
        raise TTFTError(f"task {name!r} is defined twice: {_REGISTERED[name][1]} and {source}")
    _REGISTERED[name] = (factory, source)


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def known_tasks() -> list[str]:
    return [*BUILTIN, *sorted(_REGISTERED)]


def get_task(name: str, **params) -> Task:
    if name in BUILTIN:
        return BUILTIN[name](**params)
    if name in _REGISTERED:
        return _REGISTERED[name][0](**params)
    extra = f"; user tasks: {', '.join(sorted(_REGISTERED))}" if _REGISTERED else ""
    raise TTFTError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(BUILTIN))}{extra}")


def lambda_scale(name: str) -> float:
    """A task's ``Task.lambda_scale`` without building it: a user's network task (whose factory
    loads its weights) keeps the codec's whole trade-off."""
    return BUILTIN[name]().lambda_scale if name in BUILTIN else 1.0


def describe_all() -> list[dict]:
    out = []
    for name in known_tasks():
        t = get_task(name)
        out.append(
            {
                "name": name,
                "description": t.description,
                "metric": t.metric_name,
                "higher_is_better": t.higher_is_better,
                "lambda_scale": t.lambda_scale,
            }
        )
    return out
