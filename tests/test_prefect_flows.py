import asyncio

import pytest

from .conftest import SAMPLES


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory):
    import os

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


async def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_ingest_and_query_flows_show_progress_and_summaries(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client  # noqa: F401

    from flows.prefect_flows import ingest_raster, query_decode

    archive = str(tmp_path / "a.zarr")
    state = ingest_raster(str(SAMPLES / "landsat8_224078_rgb_crop256.tif"), archive, codec="hyperprior-small",
                          tile=128, return_state=True)  # fmt: skip
    summary = state.result()
    assert summary["tiles"] == 4 and summary["bytes"] > 0
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    kinds = {a.type: a for a in artifacts}
    assert kinds["progress"].data == 100.0
    assert "landsat8_224078_rgb_crop256" in str(kinds["table"].data)
    q = query_decode(archive, summary["id"], str(tmp_path / "q.tif"), return_state=True)
    assert q.result()["shape"] == [3, 256, 256]
    [md] = [a for a in asyncio.run(_artifacts(q.state_details.flow_run_id)) if a.type == "markdown"]
    assert "GeoTIFF" in md.data and "4 tiles" in md.data
