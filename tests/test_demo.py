import pydicom
import rasterio

from ttft_archive.flows.orchestration.demo import RASTER, run_demo


def test_demo_ingests_queries_and_reports(prefect_harness, tmp_path):
    report = run_demo(str(tmp_path / "demo.zarr"), str(tmp_path / "out"), ttft_steps=1, fresh=True)
    raster, ct = report["items"]
    assert raster["complete"] and ct["complete"] and raster["bytes"] > 0 and ct["bytes"] > 0
    assert raster["ttft_seconds"] > 0 and ct["profile"] == "ct-lung-window"
    with rasterio.open(report["queries"][0]["out"]) as q, rasterio.open(RASTER) as src:
        assert q.crs == src.crs and (q.height, q.width) == (128, 128)
    [dcm] = list((tmp_path / "out" / "ct_series").glob("*.dcm"))
    assert pydicom.dcmread(dcm).LossyImageCompression == "01"
    again = run_demo(str(tmp_path / "demo.zarr"), str(tmp_path / "out"), ttft_steps=1, fresh=False)
    assert [i["written_tiles"] for i in again["items"]] == [0, 0]
