"""The deployments, in one place: `ttft serve` serves them from this machine, and infra/prefect.yaml
defines the same ones for the `cpu` and `gpu` work pools (tests/test_infra.py keeps the two in step).

Defaults come from configs.settings.ServeSettings (a preset, a YAML file or TTFT_SERVE__* variables):
the archive every deployment uses, and the inbox that is ingested on a cron.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ttft_archive.ttft_core import TTFTError

if TYPE_CHECKING:
    from prefect import Flow

    from ttft_archive.configs.settings import Settings

CPU, GPU = "cpu", "gpu"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str  # the deployment's name; Prefect shows it as "<flow name>/<name>"
    entrypoint: str  # "file.py:function" from the project root, as infra/prefect.yaml writes it
    pool: str  # the work pool in infra/prefect.yaml: gpu for the TTFT-heavy flows
    description: str
    parameters: dict = field(default_factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    # the inbox runs one at a time: two overlapping scans would both claim the same new items
    concurrency_limit: int | None = None

    @property
    def function(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]

    @property
    def module(self) -> str:
        # the project's folders install under ttft_archive (pyproject.toml)
        return "ttft_archive." + self.entrypoint.rsplit(":", 1)[0].removesuffix(".py").replace("/", ".")


FLOWS = "flows/orchestration/prefect_flows.py"


def deployment_specs(settings: Settings, gpu_device: str | None = None) -> list[DeploymentSpec]:
    """Every deployment with its default parameters. Storage options are none of them: the flows
    read TTFT_STORAGE_OPTIONS and the AWS variables of the process that runs them, so an endpoint or
    a key never sits in parameters that the UI shows. ``gpu_device`` (infra/prefect.yaml: cuda)
    is where the GPU pool's deployments tune and train; None leaves it to the serving machine's
    settings (``ttft serve``: auto)."""
    serve, inbox = settings.serve, settings.serve.inbox
    steps = inbox.ttft_steps if inbox.ttft_steps is not None else settings.ttft.steps
    on_gpu = _drop_none({"device": gpu_device})
    options = _drop_none(inbox.options().model_dump() | {"ttft_steps": steps}) | on_gpu
    coding = {"archive": serve.archive, "options": options}
    return [
        DeploymentSpec(
            "scheduled",
            f"{FLOWS}:ingest_inbox",
            GPU,
            "Ingest each new raster or DICOM series that appeared in the inbox, exactly once",
            _drop_none({"inbox": inbox.path}) | coding,
            cron=inbox.cron if inbox.path else None,
            timezone=inbox.timezone,
            concurrency_limit=1,
        ),
        DeploymentSpec(
            "on-demand",
            f"{FLOWS}:ingest_raster",
            GPU,
            "Tile and code one raster (GeoTIFF/COG) into the archive",
            coding,
        ),
        DeploymentSpec(
            "on-demand",
            f"{FLOWS}:ingest_dicom_series",
            GPU,
            "Code the DICOM series of a file or folder into the archive",
            coding,
        ),
        DeploymentSpec(
            "on-demand",
            f"{FLOWS}:query_decode",
            CPU,
            "Decode a window or a slice range of an item to GeoTIFF or DICOM",
            {"archive": serve.archive},
        ),
        # a training job's device defaults to auto: the GPU of the worker that runs it
        DeploymentSpec("on-demand", f"{FLOWS}:train_base_codec", GPU, "Train a base codec (resumable)"),
        DeploymentSpec("on-demand", f"{FLOWS}:train_task_adapter", GPU, "Pre-train a task's stage-1 adapter"),
        DeploymentSpec(
            "on-demand", f"{FLOWS}:evaluate", GPU, "Rate-fidelity curves and BD table of codecs on a data set", on_gpu
        ),
    ]


def _drop_none(values: dict) -> dict:
    # a None default is the flow's own default: leaving it out keeps the deployment's form short
    return {k: v for k, v in values.items() if v is not None}


def load_flow(spec: DeploymentSpec) -> Flow:
    """The Flow object behind a spec, imported by module so it works from any working directory."""
    from prefect import Flow

    module = importlib.import_module(spec.module)
    obj = getattr(module, spec.function, None)
    if not isinstance(obj, Flow):
        raise TTFTError(f"deployment entrypoint {spec.entrypoint}: no Prefect flow named {spec.function!r} there")
    return obj


def runner_deployments(specs: list[DeploymentSpec]) -> list:
    """Prefect RunnerDeployments for `serve`: by module path, so the runner's subprocesses import the
    installed package rather than a file relative to wherever `ttft serve` was started."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    return [
        load_flow(s).to_deployment(
            s.name,
            parameters=s.parameters,
            description=s.description,
            tags=["ttft", s.pool],
            schedules=[Cron(s.cron, timezone=s.timezone)] if s.cron else None,
            concurrency_limit=s.concurrency_limit,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for s in specs
    ]


def select(specs: list[DeploymentSpec], only: list[str] | None) -> list[DeploymentSpec]:
    """The specs whose function or flow name is in ``only`` (all when None)."""
    if not only:
        return specs
    known = {s.function: s for s in specs} | {s.function.replace("_", "-"): s for s in specs}
    unknown = [name for name in only if name not in known]
    if unknown:
        known_names = ", ".join(s.function for s in specs)
        raise TTFTError(f"--only {unknown[0]!r}: not a deployment's flow; known: {known_names}")
    return [known[name] for name in dict.fromkeys(only)]


def ui_url() -> str | None:
    """Where the Prefect UI of the configured server is (None: no server configured)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    return PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None


def serve(specs: list[DeploymentSpec], limit: int | None = None, say=print) -> None:
    """Serves ``specs`` from this process until interrupted: scheduled runs and runs started from the
    UI execute here, as subprocesses. Needs a Prefect server (PREFECT_API_URL)."""
    from prefect import serve as prefect_serve

    url = ui_url()
    if url is None:
        raise TTFTError(
            "no Prefect server: start one (`prefect server start`) and set PREFECT_API_URL, "
            "e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    deployments = runner_deployments(specs)
    for spec, d in zip(specs, deployments):
        when = f"cron '{spec.cron}' ({spec.timezone})" if spec.cron else "on demand"
        say(f"serving {d.flow_name}/{d.name}: {when}")
    say(f"Prefect UI: {url}/deployments  (Ctrl+C stops serving and pauses the schedules)", flush=True)
    prefect_serve(*deployments, limit=limit, print_starting_message=False)
