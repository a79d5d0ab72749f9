"""Figures of merit: PSNR, MS-SSIM, bits per pixel and the Bjøntegaard delta rate."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import TTFTError


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)


def ms_ssim(a: Tensor, b: Tensor) -> float:
    """MS-SSIM of (C, H, W) images in [0, 1]; needs at least 161 pixels a side (5 scales)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    return float(_ms_ssim(a[None].float(), b[None].float(), data_range=1.0))


def bpp(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)


def bd_rate(rate_a, metric_a, rate_b, metric_b) -> float:
    """Average rate difference of curve b against curve a at equal quality, in percent
    (negative: b needs fewer bits). Cubic fit of log-rate over the metric, integrated over the
    overlap of both metric ranges, as in Bjøntegaard's VCEG-M33."""
    ra, ma, rb, mb = (np.asarray(v, dtype=np.float64) for v in (rate_a, metric_a, rate_b, metric_b))
    if min(len(ra), len(rb)) < 4 or len(ra) != len(ma) or len(rb) != len(mb):
        raise TTFTError("BD-rate needs at least four (rate, metric) points on each curve")
    lo, hi = max(ma.min(), mb.min()), min(ma.max(), mb.max())
    if lo >= hi:
        raise TTFTError("BD-rate needs curves whose quality ranges overlap")
    pa, pb = np.polyfit(ma, np.log(ra), 3), np.polyfit(mb, np.log(rb), 3)
    ia, ib = np.polyint(pa), np.polyint(pb)
    avg_a = (np.polyval(ia, hi) - np.polyval(ia, lo)) / (hi - lo)
    avg_b = (np.polyval(ib, hi) - np.polyval(ib, lo)) / (hi - lo)
    return float((np.exp(avg_b - avg_a) - 1) * 100)


def bd_metric(rate_a, metric_a, rate_b, metric_b) -> float:
    """Average metric difference of curve b over curve a at equal rate (Bjøntegaard's delta PSNR,
    for any metric): cubic fits of the metric over log-rate, integrated over the rate overlap."""
    ra, ma, rb, mb = (np.asarray(v, dtype=np.float64) for v in (rate_a, metric_a, rate_b, metric_b))
    if min(len(ra), len(rb)) < 4 or len(ra) != len(ma) or len(rb) != len(mb):
        raise TTFTError("BD-metric needs at least four (rate, metric) points on each curve")
    la, lb = np.log(ra), np.log(rb)
    lo, hi = max(la.min(), lb.min()), min(la.max(), lb.max())
    if lo >= hi:
        raise TTFTError("BD-metric needs curves whose rate ranges overlap")
    ia, ib = np.polyint(np.polyfit(la, ma, 3)), np.polyint(np.polyfit(lb, mb, 3))
    avg_a = (np.polyval(ia, hi) - np.polyval(ia, lo)) / (hi - lo)
    avg_b = (np.polyval(ib, hi) - np.polyval(ib, lo)) / (hi - lo)
    return float(avg_b - avg_a)


def gap_at_equal_rate(curve: list[dict], point: dict, metric: str) -> float | None:
    """The point's metric minus the curve's at the point's rate (the curve interpolated in
    log-rate); None outside the rates the curve was measured at, where there is nothing to compare."""
    curve = sorted(curve, key=lambda p: p["bpp"])
    rates = [p["bpp"] for p in curve]
    if len(curve) < 2 or not rates[0] <= point["bpp"] <= rates[-1]:
        return None
    return point[metric] - float(np.interp(np.log(point["bpp"]), np.log(rates), [p[metric] for p in curve]))
