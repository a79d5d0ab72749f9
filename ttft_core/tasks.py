"""Tasks: a frozen, differentiable function of the image, the loss TTFT minimises on it, and the
metric a report quotes. Built-ins need no downloaded weights.

Every task sees images as the codec does, (B, C, H, W) in [0, 1]; what a [0, 1] value means in
physical units (Hounsfield units, reflectance) comes from the task's parameters, which the
configuration sets from the archive's normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
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

    def loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """MSE between the task's features of the reconstruction and of the original: no labels."""
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
    return Task("edges", "gradient magnitude (Sobel), PSNR of the edge maps", _sobel, "edge_psnr_db", _feature_psnr(_sobel))


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
    return Task("water", f"water mask NDWI > {threshold}, IoU", mask, "water_iou", _iou(mask), params={"bands": bands})


def vegetation(bands: dict[str, int], scales: tuple[float, ...] | None = None, threshold: float = 0.3) -> Task:
    mask = _soft_mask(ndvi(bands, scales).features, threshold, 0.05, above=True)
    return Task("vegetation", f"vegetation mask NDVI > {threshold}, IoU", mask, "vegetation_iou", _iou(mask),
                params={"bands": bands})  # fmt: skip


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
    return Task(name, f"CT window W{width:g}/L{level:g}, PSNR inside the window", f, "window_psnr_db",
                _feature_psnr(f), params={"width": width, "level": level})  # fmt: skip


def ct_mask(name: str, threshold_hu: float, above: bool, softness_hu: float = 50.0) -> Task:
    mask = _soft_mask(lambda x: _to_hu(x), threshold_hu, softness_hu, above)
    how = ">" if above else "<"
    return Task(name, f"CT mask HU {how} {threshold_hu:g} (soft threshold), Dice", mask, "dice", _dice(mask),
                params={"threshold_hu": threshold_hu})  # fmt: skip


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


def get_task(name: str, **params) -> Task:
    if name not in BUILTIN:
        raise TTFTError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(BUILTIN))}")
    return BUILTIN[name](**params)


def describe_all() -> list[dict]:
    out = []
    for name in BUILTIN:
        t = get_task(name)
        out.append({"name": name, "description": t.description, "metric": t.metric_name,
                    "higher_is_better": t.higher_is_better})  # fmt: skip
    return out


