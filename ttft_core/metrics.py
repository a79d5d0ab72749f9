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


def bits_per_pixel(num_bytes: int, pixels: int) -> float:
    """Bits per pixel of the source image, every band of a pixel together (an RGB pixel is one
    pixel): the rate the learned-compression literature and every report here give as bpp. Per
    band sample, pass the samples instead, and say so."""
    return 8.0 * num_bytes / pixels


def bpp(num_bytes: int, height: int, width: int) -> float:
    return bits_per_pixel(num_bytes, height * width)


def compression_ratio(source_bytes: int, num_bytes: int) -> float | None:
    """Bytes of the source's samples over the bytes stored; None when nothing is stored."""
    return source_bytes / num_bytes if num_bytes else None


def _on_curve(rate, metric) -> tuple[np.ndarray, np.ndarray]:
    """A rate-distortion curve as interpolation needs it: log-rate and metric both strictly
    increasing. A point that costs more bits than another for no better figure (a TTFT run that
    gained nothing, a tie) is not on the curve a user would pick from, and is left out; so is an
    exact decoding (PSNR infinite: a classical codec that reached lossless at a high target)."""
    r, m = np.asarray(rate, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    if len(r) != len(m) or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise TTFTError("a rate-distortion curve needs as many positive, finite rates as metric values")
    keep, best = [], -np.inf
    for i in np.lexsort((-m, r)):  # by rate, the best figure first among equal rates
        if best < m[i] < np.inf:
            keep.append(i)
            best = m[i]
    return np.log(r[keep]), m[keep]


def _pchip_mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the piecewise-cubic Hermite interpolant of y(x) over [lo, hi]."""
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(x, y).integrate(lo, hi) / (hi - lo))


def _two_curves(rate_a, metric_a, rate_b, metric_b, what: str):
    (la, ma), (lb, mb) = _on_curve(rate_a, metric_a), _on_curve(rate_b, metric_b)
    if min(len(la), len(lb)) < 4:
        raise TTFTError(f"{what} needs at least four (rate, metric) points on each curve")
    return la, ma, lb, mb


def bd_rate(rate_a, metric_a, rate_b, metric_b) -> float:
    """Average rate difference of curve b against curve a at equal quality, in percent
    (negative: b needs fewer bits). Piecewise-cubic (PCHIP) interpolation of log-rate over the
    metric, integrated over the overlap of both metric ranges: Bjøntegaard's measure as JPEG AI's
    common test conditions compute it (a global cubic fit overshoots between sparse points)."""
    la, ma, lb, mb = _two_curves(rate_a, metric_a, rate_b, metric_b, "BD-rate")
    lo, hi = max(ma.min(), mb.min()), min(ma.max(), mb.max())
    if lo >= hi:
        raise TTFTError("BD-rate needs curves whose quality ranges overlap")
    return float((np.exp(_pchip_mean(mb, lb, lo, hi) - _pchip_mean(ma, la, lo, hi)) - 1) * 100)


def bd_metric(rate_a, metric_a, rate_b, metric_b) -> float:
    """Average metric difference of curve b over curve a at equal rate (Bjøntegaard's delta PSNR,
    for any metric): piecewise-cubic interpolation of the metric over log-rate, integrated over
    the overlap of both rate ranges."""
    la, ma, lb, mb = _two_curves(rate_a, metric_a, rate_b, metric_b, "BD-metric")
    lo, hi = max(la.min(), lb.min()), min(la.max(), lb.max())
    if lo >= hi:
        raise TTFTError("BD-metric needs curves whose rate ranges overlap")
    return _pchip_mean(lb, mb, lo, hi) - _pchip_mean(la, ma, lo, hi)


def per_image_bd_rate(curves_a: list[tuple], curves_b: list[tuple]) -> dict:
    """The headline comparison of two codecs over a set: each image's BD-rate of its own curve b
    against its own curve a (each curve a (rates, metrics) pair), then their mean and median; the
    images whose curves do not overlap are counted and named by index, not averaged in."""
    if len(curves_a) != len(curves_b):
        raise TTFTError("per-image BD-rate needs one curve of each codec per image")
    values, skipped = [], []
    for i, (a, b) in enumerate(zip(curves_a, curves_b)):
        try:
            values.append(bd_rate(*a, *b))
        except TTFTError:
            values.append(None)
            skipped.append(i)
    counted = [v for v in values if v is not None]
    return {
        "per_image_bd_rate_percent": values,
        "per_image_bd_rate_mean": float(np.mean(counted)) if counted else None,
        "per_image_bd_rate_median": float(np.median(counted)) if counted else None,
        "images_counted": len(counted),
        "images_without_overlap": skipped,
    }


def metric_at_rate(rates, metrics, rate: float) -> float | None:
    """A curve's metric at ``rate``, interpolated in log-rate; None outside the rates the curve was
    measured at, where there is nothing to compare."""
    order = np.argsort(rates)
    r, m = np.asarray(rates, dtype=np.float64)[order], np.asarray(metrics, dtype=np.float64)[order]
    if len(r) < 2 or not r[0] <= rate <= r[-1]:
        return None
    return float(np.interp(np.log(rate), np.log(r), m))


def gap_at_equal_rate(curve: list[dict], point: dict, metric: str) -> float | None:
    """The point's metric minus the curve's at the point's rate (the curve interpolated in
    log-rate); None outside the rates the curve was measured at, where there is nothing to compare."""
    theirs = metric_at_rate([p["bpp"] for p in curve], [p[metric] for p in curve], point["bpp"])
    return None if theirs is None else point[metric] - theirs


def per_image_curves(points: list[dict], metric: str, rate: str = "bpp", sign: float = 1.0) -> list[tuple]:
    """Each image's own (rates, metrics) curve, from rate points that keep every image's figures
    in lists under ``per_image`` (``sign`` -1 turns a lower-is-better metric around)."""
    count = len(points[0]["per_image"][rate])
    return [
        ([p["per_image"][rate][i] for p in points], [sign * p["per_image"][metric][i] for p in points])
        for i in range(count)
    ]
