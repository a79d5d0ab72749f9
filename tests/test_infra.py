"""What can be checked of infra/ without Docker: the compose file, prefect.yaml and the Dockerfile
parse, name files that exist and flows that exist, and agree with flows/orchestration/deployments.py."""

from __future__ import annotations

import inspect
import os
import re
import tomllib

import pytest
import yaml

from .conftest import ROOT

INFRA = ROOT / "infra"


def _specs(archive: str = "archive.zarr", inbox: str | None = None, gpu_device: str | None = None):
    from ttft_archive.configs.settings import load_settings
    from ttft_archive.flows.orchestration.deployments import deployment_specs

    return deployment_specs(load_settings(serve={"archive": archive, "inbox": {"path": inbox}}), gpu_device)


def _prefect_yaml() -> dict:
    return yaml.safe_load((INFRA / "prefect.yaml").read_text())


def _device(deployment: dict) -> str | None:
    """Where a deployment tunes or trains: an ingest's options say, a training flow's parameters."""
    parameters = deployment.get("parameters") or {}
    return parameters.get("device") or (parameters.get("options") or {}).get("device")


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.function)
def test_each_deployment_resolves_to_a_flow_taking_its_parameters(spec):
    from prefect import Flow

    from ttft_archive.flows.orchestration.deployments import load_flow

    flow = load_flow(spec)
    assert isinstance(flow, Flow)
    signature = inspect.signature(flow.fn).parameters
    assert set(spec.parameters) <= set(signature), f"{spec.entrypoint} takes no {set(spec.parameters) - set(signature)}"
    assert spec.pool in ("cpu", "gpu")


@pytest.mark.parametrize("index", range(len(_prefect_yaml()["deployments"])))
def test_prefect_yaml_entrypoints_load_as_flows_with_prefects_own_loader(index, monkeypatch):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    entrypoint = _prefect_yaml()["deployments"][index]["entrypoint"]
    monkeypatch.chdir(ROOT)  # `prefect deploy` runs from the project root
    assert isinstance(load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False), Flow)


def test_prefect_yaml_defines_the_deployments_of_deployments_py():
    config = _prefect_yaml()
    deployments = config["deployments"]
    by_entrypoint = {d["entrypoint"]: d for d in deployments}
    inbox = by_entrypoint["flows/orchestration/prefect_flows.py:ingest_inbox"]["parameters"]
    specs = _specs(archive=inbox["archive"], inbox=inbox["inbox"], gpu_device="cuda")
    assert len(deployments) == len(by_entrypoint) == len(specs)
    for spec in specs:
        d = by_entrypoint[spec.entrypoint]
        assert d["name"] == spec.name and d["work_pool"]["name"] == spec.pool, spec.entrypoint
        assert (d.get("parameters") or {}) == spec.parameters, spec.entrypoint
        assert d.get("concurrency_limit") == spec.concurrency_limit
        schedules = d.get("schedules") or []
        assert [(s["cron"], s["timezone"]) for s in schedules] == ([(spec.cron, spec.timezone)] if spec.cron else [])
    assert {d["work_pool"]["name"] for d in deployments} == {"cpu", "gpu"}
    # TTFT is the heavy step: every flow that encodes or trains goes to the GPU pool
    heavy = [d for d in deployments if re.search(r"ingest|train|evaluate", d["entrypoint"])]
    assert heavy and all(d["work_pool"]["name"] == "gpu" for d in heavy)
    # ... and tunes or trains on the GPU there; the query decodes on the CPU pool
    ingesting = [d for d in heavy if re.search(r"ingest|evaluate", d["entrypoint"])]
    assert all(_device(d) == "cuda" for d in ingesting)
    # a training job's device is part of the job (auto: the worker's GPU); the query decodes on a CPU
    assert all(_device(d) is None for d in deployments if d not in ingesting)
    [pull] = config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == _workdir()


def _workdir() -> str:
    [line] = [ln for ln in (INFRA / "Dockerfile").read_text().splitlines() if ln.startswith("WORKDIR")]
    return line.split()[1]


def test_inbox_cron_comes_from_the_config(tmp_path):
    from ttft_archive.configs.settings import load_settings
    from ttft_archive.flows.orchestration.deployments import deployment_specs
    from ttft_archive.ttft_core import TTFTError

    preset = tmp_path / "site.yaml"
    preset.write_text(
        "serve:\n  archive: s3://b/a.zarr\n  inbox:\n    path: /srv/inbox\n    cron: '0 2 * * *'\n"
        "    task: ct-lung-window\n    quality: 2\n"
    )
    [inbox] = [s for s in deployment_specs(load_settings(str(preset))) if s.function == "ingest_inbox"]
    assert inbox.cron == "0 2 * * *" and inbox.pool == "gpu"
    assert inbox.parameters == {
        "inbox": "/srv/inbox",
        "archive": "s3://b/a.zarr",
        "options": {"task": "ct-lung-window", "quality": 2, "ttft_steps": 40, "tile": 256},
    }
    os.environ["TTFT_SERVE__INBOX__CRON"] = "5 * * * *"
    try:
        [inbox] = [s for s in deployment_specs(load_settings()) if s.function == "ingest_inbox"]
    finally:
        del os.environ["TTFT_SERVE__INBOX__CRON"]
    assert inbox.cron is None  # no inbox path, no schedule: nothing to scan
    with pytest.raises(TTFTError, match="serve.inbox.cron"):
        load_settings(serve={"inbox": {"cron": "every hour"}})
    assert _prefect_yaml_cron() == load_settings().serve.inbox.cron  # prefect.yaml states the default


def _prefect_yaml_cron() -> str:
    [d] = [d for d in _prefect_yaml()["deployments"] if d["entrypoint"].endswith(":ingest_inbox")]
    return d["schedules"][0]["cron"]


def test_only_selects_deployments_and_names_unknown_ones():
    from ttft_archive.flows.orchestration.deployments import select
    from ttft_archive.ttft_core import TTFTError

    specs = _specs()
    assert [s.function for s in select(specs, ["query-decode", "ingest_raster"])] == ["query_decode", "ingest_raster"]
    with pytest.raises(TTFTError, match="'ingest'"):
        select(specs, ["ingest"])


def test_ttft_serve_without_a_server_says_so(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ttft_archive.flows.cli import main

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve", "--only", "query_decode"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PREFECT_API_URL" in err[0]


def test_compose_services_and_the_files_they_name():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "worker-cpu", "worker-gpu", "setup"} <= set(services)
    server = services["prefect-server"]
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server["image"].startswith("prefecthq/prefect:3.")
    for name in ("worker-cpu", "worker-gpu", "setup"):
        build = services[name]["build"]
        context = (INFRA / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "minio:9000" in env["TTFT_STORAGE_OPTIONS"]
    pools = {
        name: re.search(r"--pool (\S+)", services[name]["command"]).group(1) for name in ("worker-cpu", "worker-gpu")
    }
    assert pools == {"worker-cpu": "cpu", "worker-gpu": "gpu"}
    assert services["worker-gpu"]["runtime"] == "nvidia"
    assert services["worker-gpu"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    # the setup script runs from the image's copy of the project: the same file as infra/setup.sh
    script = services["setup"]["entrypoint"][-1]
    assert script.startswith(_workdir() + "/") and (ROOT / script.removeprefix(_workdir() + "/")).is_file()
    setup = (INFRA / "setup.sh").read_text()
    assert "prefect gcl create gpu" in setup and "--prefect-file infra/prefect.yaml" in setup
    assert "for pool in cpu gpu" in setup


def test_dockerfile_copies_what_exists_and_installs_from_constraints():
    text = (INFRA / "Dockerfile").read_text()
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    copied = [src for line in text.splitlines() if line.startswith("COPY") for src in line.split()[1:-1]]
    assert copied, "no COPY lines"
    for src in copied:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore, f"{src} is left out of the build context by Dockerfile.dockerignore"
    assert "-c constraints.txt" in text
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert set(folders) <= set(copied)  # every folder of the installed package is in the image
