import asyncio

import numpy as np
import pytest
import torch

from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.metrics import bd_metric, bd_rate, gap_at_equal_rate


def test_bd_rate_and_bd_metric_recover_known_shifts():
    rate = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    quality = 30 + 3 * np.log2(rate / 0.1)
    assert bd_rate(rate, quality, 0.8 * rate, quality) == pytest.approx(-20.0, abs=1e-6)
    assert bd_metric(rate, quality, rate, quality + 1.5) == pytest.approx(1.5, abs=1e-6)
    with pytest.raises(TTFTError, match="four"):
        bd_rate(rate[:3], quality[:3], rate[:3], quality[:3])


def test_unknown_variant_or_evaluation_set_is_one_clear_error():
    from ttft_archive.flows.evaluation.evaluate import evaluate

    with pytest.raises(TTFTError, match="unknown evaluation variants"):
        evaluate("pixel", "kodak", variants=("base", "webp"))
    with pytest.raises(TTFTError, match="unknown evaluation set"):
        evaluate("pixel", "imagenet")


def test_evaluate_flow_reports_curves_from_real_bytes_and_a_bd_table(prefect_harness, tmp_path):
    from ttft_archive.adapters.zoo import family_rate_points
    from ttft_archive.flows.orchestration.prefect_flows import evaluate

    state = evaluate(
        "edges",
        "kodak",
        count=1,
        size=64,
        ttft_steps=1,
        variants=["base", "ttft-open", "jpeg2000"],
        plot_dir=str(tmp_path),
        return_state=True,
    )
    result = state.result()
    points = len(family_rate_points("rgb"))
    assert [len(result["curves"][v]) for v in ("base", "ttft-open")] == [points, points]
    # one adapter step and one refining the latents, by default
    assert all(p["adapter"] == "zero" and p["ttft_steps"] == 2 for p in result["curves"]["ttft-open"])
    assert all(p["bpp"] > 0 for c in result["curves"].values() for p in c)
    [row] = [r for r in result["table"] if (r["curve"], r["against"]) == ("base", "jpeg2000")]
    assert (row["bd_rate_percent"] is None) == (points < 4)
    # the payload rate leaves each tile's fixed header out, and is compared between learned curves only
    assert all(0 < p["payload_bpp"] < p["bpp"] for v in ("base", "ttft-open") for p in result["curves"][v])
    assert [(r["curve"], r["against"]) for r in result["table_payload"]] == [("ttft-open", "base")]
    assert (tmp_path / "eval_edges_kodak.png").stat().st_size > 0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def artifacts():
        async with get_client() as client:
            flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            return await client.read_artifacts(artifact_filter=flt)

    kinds = {a.type: a for a in asyncio.run(artifacts())}
    assert "jpeg2000" in str(kinds["table"].data) and "bpp" in kinds["markdown"].data


def test_a_cross_band_task_is_evaluated_over_rgb_and_nir_coded_apart():
    from ttft_archive.flows.evaluation.evaluate import evaluate

    result = evaluate(
        "ndvi", "multispectral", count=1, size=64, ttft_steps=1, variants=("base", "ttft-open", "jpeg2000")
    )
    assert result["metric"] == "ndvi_mae" and result["higher_is_better"] is False
    for point in result["curves"]["ttft-open"]:
        rgb, nir = point["codec"].split("+")
        assert rgb.startswith("rgb-") and nir.startswith("gray16-") and point["ttft_steps"] == 4  # two per group
    assert all(0 <= p["metric"] < 1 for c in result["curves"].values() for p in c)


def test_the_multispectral_set_counts_each_distinct_image_once(shared_data):
    """The RGBN tile's two dates ship as identical pixels: the set takes one and fills up with
    crops of the 7-band scene."""
    from ttft_archive.adapters.eval_sets import open_eval_set

    images = open_eval_set("multispectral", 4, 128).images
    assert len(images) == 4
    assert not any(torch.equal(a.x, b.x) for i, a in enumerate(images) for b in images[i + 1 :])


def test_classical_codecs_code_the_band_groups_the_learned_codecs_code():
    """One four-component file is no fair baseline (JPEG XL keeps the fourth band lossless as
    alpha): each group is its own file, and the bytes are their sum."""
    from ttft_archive.adapters.classical import roundtrip, roundtrip_groups
    from ttft_archive.adapters.raster import read_window

    from .conftest import SAMPLES

    rgbn = np.ascontiguousarray(read_window(SAMPLES / "rgbn_4band_20160517_crop192.tif").transpose(1, 2, 0))
    n, decoded = roundtrip_groups("jpegxl", rgbn, 3, [[0, 1, 2], [3]])
    assert n == roundtrip("jpegxl", rgbn[..., :3].copy(), 3)[0] + roundtrip("jpegxl", rgbn[..., 3].copy(), 3)[0]
    assert decoded.shape == rgbn.shape and not np.array_equal(decoded[..., 3], rgbn[..., 3])
    assert n < roundtrip("jpegxl", rgbn, 3)[0]


def test_gap_at_equal_rate_interpolates_in_log_rate_and_only_inside_the_curve():
    curve = [{"bpp": 0.4, "psnr": 34.0}, {"bpp": 0.1, "psnr": 30.0}]  # any order
    # 0.2 bpp is halfway between 0.1 and 0.4 in log-rate: the curve gives 32 dB there
    assert gap_at_equal_rate(curve, {"bpp": 0.2, "psnr": 33.0}, "psnr") == pytest.approx(1.0)
    assert gap_at_equal_rate(curve, {"bpp": 0.05, "psnr": 40.0}, "psnr") is None
    assert gap_at_equal_rate(curve, {"bpp": 0.5, "psnr": 40.0}, "psnr") is None
