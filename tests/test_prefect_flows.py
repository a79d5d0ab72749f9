import asyncio
import json
from pathlib import Path

from ttft_archive.configs import IngestOptions

from .conftest import SAMPLES


async def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_ingest_and_query_flows_show_progress_and_summaries(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client  # noqa: F401

    from ttft_archive.flows.orchestration.prefect_flows import ingest_raster, query_decode

    archive = str(tmp_path / "a.zarr")
    state = ingest_raster(
        str(SAMPLES / "landsat8_224078_rgb_crop256.tif"),
        archive,
        IngestOptions(codec="hyperprior-small", tile=128, ttft_steps=0),
        return_state=True,
    )
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


async def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _plan(archive, ttft_steps=0, tile=64):
    from ttft_archive.flows.jobs.raster import plan_raster
    from ttft_archive.flows.jobs.tiles import tiles_to_code

    job = plan_raster(
        str(SAMPLES / "landsat8_224078_rgb_crop256.tif"),
        archive,
        codec="rgb-hyperprior-q1",
        tile=tile,
        ttft_steps=ttft_steps,
    )
    return job, tiles_to_code(job)


def test_ttft_never_holds_more_slots_than_the_concurrency_limit(prefect_harness, tmp_path):
    """Three tile workers, one `gpu` slot: the TTFT steps of different tiles never overlap in time."""
    from dataclasses import replace

    from ttft_archive.configs.settings import OrchestrationSettings
    from ttft_archive.flows.orchestration.prefect_flows import encode_tiles, task_runner

    job, todo = _plan(str(tmp_path / "a.zarr"), ttft_steps=2)
    job = replace(job, batch=1)  # a task per tile
    orchestration = OrchestrationSettings(workers=3, ttft_limit="gpu-test-one", ttft_slots=1)
    flow = encode_tiles.with_options(task_runner=task_runner(orchestration))
    outcomes = flow(job, todo[:6], len(todo), orchestration, _progress_id())
    slots = sorted(o["ttft_slot"] for o in outcomes)
    assert len(slots) == 6 and all(o["ttft_steps"] > 0 for o in outcomes)
    assert all(earlier[1] <= later[0] for earlier, later in zip(slots, slots[1:])), slots


def test_small_tiles_are_tuned_in_one_batch_and_code_as_when_tuned_alone(prefect_harness, tmp_path):
    """64x64 tiles: 16 to a TTFT batch by default (ttft.batch_pixels). Four tiles go in one task,
    tuned together in one slot, and code to the bytes each tile gets tuned alone, within the
    float rounding that batching changes (on these tiles: identical bytes)."""
    from ttft_archive.configs.settings import OrchestrationSettings
    from ttft_archive.flows.jobs.tiles import encode_batch
    from ttft_archive.flows.orchestration.prefect_flows import encode_tiles

    job, todo = _plan(str(tmp_path / "a.zarr"), ttft_steps=3)
    assert job.batch == 16
    state = encode_tiles(job, todo[:4], len(todo), OrchestrationSettings(), _progress_id(), return_state=True)
    batched = state.result()
    assert len(asyncio.run(_task_runs(state.state_details.flow_run_id))) == 1
    assert len({tuple(o["ttft_slot"]) for o in batched}) == 1
    alone_job, alone_todo = _plan(str(tmp_path / "b.zarr"), ttft_steps=3)
    assert alone_todo[:4] == todo[:4]  # same pixels, same settings: same keys
    alone = [encode_batch(alone_job, [(index, key)])[0] for index, key in todo[:4]]
    assert [o["state"] for o in batched] == ["coded"] * 4 and all(o["ttft_steps"] == 6 for o in batched)
    for b, a in zip(batched, alone):
        assert b["index"] == a["index"] and a["ttft_steps"] == 6
        assert abs(b["bytes"] - a["bytes"]) <= 0.02 * a["bytes"], (b, a)
        assert abs(b["fidelity"] - a["fidelity"]) < 0.05, (b, a)


def test_a_tile_coded_into_the_same_archive_is_taken_from_the_cache(prefect_harness, tmp_path):
    from dataclasses import replace

    from ttft_archive.configs.settings import OrchestrationSettings
    from ttft_archive.flows.orchestration.prefect_flows import encode_tiles

    job, todo = _plan(str(tmp_path / "a.zarr"))
    job = replace(job, batch=1)  # a task per tile
    first = encode_tiles(job, todo[:2], len(todo), OrchestrationSettings(), _progress_id(), return_state=True)
    again = encode_tiles(job, todo[:2], len(todo), OrchestrationSettings(), _progress_id(), return_state=True)
    assert again.result() == first.result()
    states = [run.state.name for run in asyncio.run(_task_runs(again.state_details.flow_run_id))]
    assert states == ["Cached", "Cached"]
    # another archive at another place: the same pixels are coded again, not taken from the cache
    other, todo = _plan(str(tmp_path / "b.zarr"))
    other = replace(other, batch=1)
    third = encode_tiles(other, todo[:2], len(todo), OrchestrationSettings(), _progress_id(), return_state=True)
    assert [run.state.name for run in asyncio.run(_task_runs(third.state_details.flow_run_id))] == ["Completed"] * 2


def test_dask_runner_codes_the_same_bytes_as_threads(prefect_harness, tmp_path, monkeypatch):
    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.orchestration.prefect_flows import ingest_raster

    source = str(SAMPLES / "landsat8_224078_rgb_crop256.tif")
    by_threads = ingest_raster(
        source, str(tmp_path / "t.zarr"), IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0)
    )
    monkeypatch.setenv("TTFT_ORCHESTRATION__RUNNER", "dask")
    monkeypatch.setenv("TTFT_ORCHESTRATION__WORKERS", "2")
    by_dask = ingest_raster(
        source, str(tmp_path / "d.zarr"), IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0)
    )
    assert by_dask["written_tiles"] == by_threads["written_tiles"] == 4
    a, b = (Archive(str(tmp_path / n), create=False).profile(by_dask["id"], "pixel") for n in ("t.zarr", "d.zarr"))
    assert b.complete and all(a.read_tile(i) == b.read_tile(i) for i in a.indices())


def test_inbox_ingests_each_new_arrival_once(prefect_harness, tmp_path):
    import shutil

    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.orchestration.prefect_flows import ingest_inbox

    inbox, archive = tmp_path / "inbox", str(tmp_path / "a.zarr")
    (inbox / "ct").mkdir(parents=True)
    shutil.copy(SAMPLES / "landsat8_224078_rgb_crop256.tif", inbox / "scene.tif")
    shutil.copy(SAMPLES / "ct_3slice_01.dcm", inbox / "ct" / "slice.dcm")
    (inbox / "notes.txt").write_text("not an image")
    first = ingest_inbox(
        str(inbox), archive, IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0), settle_seconds=0
    )
    assert sorted(r["profile"] for r in first) == ["pixel", "pixel"] and len(first) == 2
    assert (
        ingest_inbox(
            str(inbox), archive, IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0), settle_seconds=0
        )
        == []
    )
    shutil.copy(SAMPLES / "landsat8_224078_rgb_crop256.tif", inbox / "later.tif")  # a new arrival
    later = ingest_inbox(
        str(inbox), archive, IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0), settle_seconds=0
    )
    assert [r["id"] for r in later] == ["later"]
    assert Archive(archive, create=False).inbox_record(str(inbox / "later.tif"))["items"] == ["later"]
    # a file still being written (changed within the settle time) waits for the next look
    (inbox / "arriving.tif").write_bytes((inbox / "scene.tif").read_bytes())
    assert (
        ingest_inbox(
            str(inbox), archive, IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0), settle_seconds=3600
        )
        == []
    )


def _progress_id():
    from prefect.artifacts import create_progress_artifact

    return str(create_progress_artifact(0.0))


def test_training_flows_run_a_few_steps_and_write_what_they_train(prefect_harness, tmp_path):
    from ttft_archive.flows.orchestration.prefect_flows import train_base_codec, train_task_adapter
    from ttft_archive.flows.training.base_codec import TrainBaseJob
    from ttft_archive.flows.training.task_adapter import TrainAdapterJob

    from .test_stage1 import tiny_data

    data = str(tiny_data(tmp_path / "data"))
    adapter = train_task_adapter(
        TrainAdapterJob(
            task="edges",
            codec="hyperprior-small",
            data=[data],
            steps=2,
            batch=2,
            crop=64,
            out=str(tmp_path / "store"),
            run_dir=str(tmp_path / "adapter-run"),
            eval_crop=64,
        )
    )
    assert Path(adapter).name == "untrained-hyperprior-small-c3--edges.safetensors" and Path(adapter).is_file()
    codec = train_base_codec(
        TrainBaseJob(
            codec_id="tiny-rgb",
            data=[data],
            run_dir=str(tmp_path / "base-run"),
            steps=2,
            batch=2,
            crop=64,
            export_to=str(tmp_path / "codecs"),
            family="rgb",
        )
    )
    assert Path(codec).with_suffix(".safetensors").is_file()


def test_inbox_on_an_s3_prefix_ingests_a_scene_and_a_series_into_an_s3_archive(prefect_harness, monkeypatch):
    import s3fs

    from ttft_archive.adapters.archive import Archive
    from ttft_archive.flows.orchestration.prefect_flows import ingest_inbox

    from .s3_server import moto_s3

    with moto_s3() as (options, bucket):
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(options))  # as a worker's environment holds them
        fs = s3fs.S3FileSystem(**options)
        fs.put(str(SAMPLES / "landsat8_224078_rgb_crop256.tif"), f"{bucket}/inbox/scene.tif")
        fs.put(str(SAMPLES / "ct_3slice_01.dcm"), f"{bucket}/inbox/ct/slice.dcm")
        archive = f"s3://{bucket}/a.zarr"
        reports = ingest_inbox(
            f"s3://{bucket}/inbox",
            archive,
            IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0),
            settle_seconds=0,
        )
        assert len(reports) == 2 and all(r["complete"] for r in reports)
        ledger = Archive(archive, options, create=False)
        assert ledger.inbox_record(f"s3://{bucket}/inbox/scene.tif")["items"] == ["scene"]
        again = ingest_inbox(
            f"s3://{bucket}/inbox",
            archive,
            IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0),
            settle_seconds=0,
        )
        assert again == []


def test_ingest_tunes_every_tile_by_default_with_the_settings_steps(prefect_harness, tmp_path, monkeypatch):
    """No ttft_steps: the settings' ttft.steps (40, here 1 through the environment to stay fast),
    then as many latent steps; ttft_steps=0 turns tuning off."""
    from ttft_archive.flows.orchestration.prefect_flows import ingest_raster

    assert IngestOptions().with_steps().ttft_steps == 40 and IngestOptions(ttft_steps=0).with_steps().ttft_steps == 0
    monkeypatch.setenv("TTFT_TTFT__STEPS", "1")
    source = str(SAMPLES / "landsat8_224078_rgb_crop256.tif")
    tuned = ingest_raster(source, str(tmp_path / "a.zarr"), IngestOptions(codec="rgb-hyperprior-q1", tile=128))
    assert tuned["ttft_steps"] > 0
    bare = ingest_raster(
        source, str(tmp_path / "b.zarr"), IngestOptions(codec="rgb-hyperprior-q1", tile=128, ttft_steps=0)
    )
    assert bare["ttft_steps"] == 0


def test_bad_inputs_fail_the_flow_run_in_one_line_before_the_archive_is_touched(prefect_harness, tmp_path):
    """The flows plan with the command line's checks: a run given a broken raster, a truncated
    DICOM file, a task the data cannot take or an item that is not there ends Failed with one
    line naming the input, and no archive is created."""
    from ttft_archive.flows.orchestration.prefect_flows import ingest_dicom_series, ingest_raster, query_decode
    from ttft_archive.ttft_core import TTFTError

    archive = tmp_path / "a.zarr"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + bytes(100))
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes((SAMPLES / "ct_3slice_01.dcm").read_bytes()[:3000])
    fast = IngestOptions(codec="hyperprior-small", tile=128, ttft_steps=0)
    runs = {
        "broken.tif": lambda: ingest_raster(str(broken), str(archive), fast, return_state=True),
        "ndvi": lambda: ingest_raster(
            str(SAMPLES / "landsat8_224078_rgb_crop256.tif"),
            str(archive),
            fast.model_copy(update={"task": "ndvi"}),
            return_state=True,
        ),
        "cut.dcm": lambda: ingest_dicom_series(str(truncated), str(archive), fast, return_state=True),
    }
    for name, run in runs.items():
        state = run()
        error = state.result(raise_on_failure=False)
        assert state.is_failed() and isinstance(error, TTFTError), (name, error)
        assert name in str(error) and "\n" not in str(error)
        assert not archive.exists(), name
    state = query_decode(str(archive), "nothing", str(tmp_path / "q.tif"), return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, TTFTError) and "\n" not in str(error)
    assert not archive.exists() and not (tmp_path / "q.tif").exists()
