"""The evaluation convention (docs/evaluation.md): classical codecs swept per image to target
rates, the headline figure the mean of per-image BD-rates over piecewise-cubic curves."""

import numpy as np
import pytest

from ttft_archive.adapters.classical import CODECS, RATE_TOLERANCE, lossless_bytes, sweep
from ttft_archive.adapters.eval_sets import SAMPLES
from ttft_archive.adapters.image_files import read_rgb_u8
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.metrics import bd_rate, per_image_bd_rate


@pytest.fixture(scope="module")
def kodak_crop() -> np.ndarray:
    return np.ascontiguousarray(read_rgb_u8(SAMPLES / "kodim23_crop256.png").permute(1, 2, 0).numpy())


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_the_same_rate_sweep_hits_each_target_within_one_percent(codec, kodak_crop):
    targets = [0.25, 0.5, 1.0]
    points = sweep(codec, kodak_crop, targets)
    pixels = kodak_crop.shape[0] * kodak_crop.shape[1]
    for target, point in zip(targets, points):
        assert abs(8 * point.nbytes / pixels - target) <= RATE_TOLERANCE * target
        assert point.decoded.shape == kodak_crop.shape
    # more bytes buy a closer decoding
    errors = [np.mean((p.decoded.astype(float) - kodak_crop) ** 2) for p in points]
    assert errors[0] > errors[1] > errors[2]


def test_a_target_beyond_the_parameter_limit_gives_the_closest_rate_reached(kodak_crop):
    [point] = sweep("jpegxl", kodak_crop, [0.001])  # far under what distance 25 reaches
    assert point.level == CODECS["jpegxl"].limits[0]


def test_lossless_sizes_are_real_and_exact(kodak_crop):
    sizes = lossless_bytes(kodak_crop)
    assert set(sizes) == {"jpeg2000", "htj2k", "jpegls", "jpegxl"}
    # lossless RGB photographs take several bits per pixel, far more than any lossy point here
    pixels = kodak_crop.shape[0] * kodak_crop.shape[1]
    assert all(8 * n / pixels > 2.0 for n in sizes.values())


def _curve(scale: float = 1.0, offset_db: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rate = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    return scale * rate, 30 + 3 * np.log2(rate / 0.1) + 0.2 * np.sin(rate) + offset_db


def test_per_image_bd_rate_of_a_curve_against_itself_is_zero():
    images = [_curve(offset_db=d) for d in (0.0, 1.5, -2.0)]
    summary = per_image_bd_rate(images, images)
    assert summary["per_image_bd_rate_percent"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert summary["per_image_bd_rate_mean"] == pytest.approx(0.0, abs=1e-9)


def test_a_curve_shifted_by_a_known_rate_factor_gives_that_factor():
    a = [_curve(offset_db=d) for d in (0.0, 1.0, 4.0)]
    b = [_curve(scale=f, offset_db=d) for f, d in zip((0.8, 0.9, 1.25), (0.0, 1.0, 4.0))]
    summary = per_image_bd_rate(a, b)
    assert summary["per_image_bd_rate_percent"] == pytest.approx([-20.0, -10.0, 25.0], abs=1e-6)
    assert summary["per_image_bd_rate_mean"] == pytest.approx(-5.0 / 3, abs=1e-6)
    assert summary["per_image_bd_rate_median"] == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(*a[0], *b[0]) == pytest.approx(-20.0, abs=1e-6)


def test_an_image_whose_curves_do_not_overlap_is_named_not_averaged():
    a = [_curve(), _curve()]
    b = [_curve(scale=0.5), _curve(offset_db=40.0)]
    summary = per_image_bd_rate(a, b)
    assert summary["images_counted"] == 1 and summary["images_without_overlap"] == [1]
    assert summary["per_image_bd_rate_mean"] == pytest.approx(-50.0, abs=1e-6)


def test_a_dominated_point_is_not_on_the_curve():
    rate, quality = _curve()
    # a point that costs more than another for a worse figure changes nothing
    with_extra = (np.append(rate, 0.5), np.append(quality, quality[0]))
    assert bd_rate(rate, quality, *with_extra) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(TTFTError, match="positive"):
        bd_rate(np.append(rate, 0.0), np.append(quality, 40.0), rate, quality)


def test_an_exact_decoding_is_not_on_the_curve():
    """A classical codec that reaches lossless at a high target decodes with PSNR infinite: that
    point has no place on a PSNR curve, and the rest still compares."""
    rate, quality = _curve()
    with_lossless = (np.append(rate, rate.max() * 2), np.append(quality, np.inf))
    assert bd_rate(rate, quality, *with_lossless) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(*with_lossless, rate, quality) == pytest.approx(0.0, abs=1e-9)
