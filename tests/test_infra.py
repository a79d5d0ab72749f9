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
        "options": {"task": "ct-lung-window", "quality": "2", "ttft_steps": 40},  # no tile: each item's own
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
    assert "runtime" not in services["worker-gpu"]  # the GPU comes from its device reservation
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


# -- the stack's security: credentials, networks, images, GPU, healthchecks ---------------------------------

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.console.yml")
# every secret of the stack: a required variable of infra/.env, never a value in a committed file
SECRETS = {"PREFECT_AUTH_STRING", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "TTFT_S3_SECRET_KEY"}
# the variables a stack may leave out, with their defaults
OPTIONAL = {"TTFT_BIND_ADDRESS": "127.0.0.1", "TTFT_UI_API_URL": "http://127.0.0.1:4200/api"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|_TOKEN|_KEY$|CONNECTION_URL")
VARIABLE = re.compile(r"\$\{(\w+)(:?[-?])?([^}]*)\}")
LITERALS = ("minioadmin", "ttft-secret", "postgres:postgres", "prefect:prefect@", "admin:pass", "changeme")


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """What compose makes of a value with `env` as infra/.env: defaults where unset, an error where
    a required variable is missing or empty."""
    env = env or {}

    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        assert op == ":-", f"${{{name}}} has neither a default nor the required form"
        return arg

    return VARIABLE.sub(one, value)


def _strings(node):
    """Every string of a parsed YAML document, with the key it is the value of."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from ((k, v) for k, v in _strings({"": value}))


def _env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def _required_variables() -> set[str]:
    text = "\n".join((INFRA / f).read_text() for f in COMPOSE_FILES)
    return {m.group(1) for m in VARIABLE.finditer(text) if m.group(2) == ":?"}


def test_every_secret_is_a_required_variable_of_infra_env():
    for file in COMPOSE_FILES:
        text = (INFRA / file).read_text()
        for m in VARIABLE.finditer(text):
            name, op, _ = m.groups()
            # a secret must be set, and non-empty: `${VAR:?message}`; the rest have defaults
            assert op == ":?" if name in SECRETS else (op == ":?" or name in OPTIONAL), f"{file}: {m.group(0)}"
            if name in OPTIONAL:
                assert m.group(3) == OPTIONAL[name], m.group(0)
        for literal in LITERALS:
            assert literal not in text.lower(), f"{file} holds the default credential {literal!r}"
    assert SECRETS <= _required_variables()
    services = _compose()["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                # the whole value, or its password part, is a required variable: nothing literal
                assert VARIABLE.search(value) and VARIABLE.search(value).group(2) == ":?", f"{name}: {key}"
    url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert _interpolate(url, {"POSTGRES_PASSWORD": "pw"}) == "postgresql+asyncpg://prefect:pw@postgres:5432/prefect"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(url, {"POSTGRES_PASSWORD": ""})  # an empty value stops compose like a missing one


def test_prefect_server_requires_auth_and_every_client_sends_it():
    services = _compose()["services"]
    server = services["prefect-server"]["environment"]
    auth = server["PREFECT_SERVER_API_AUTH_STRING"]
    assert auth.startswith("${PREFECT_AUTH_STRING:?")
    clients = [name for name, s in services.items() if "PREFECT_API_URL" in (s.get("environment") or {})]
    assert {"worker-cpu", "worker-gpu", "setup"} <= set(clients)
    for name in clients:
        env = services[name]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == auth, name  # the same string as the server's
        assert "PREFECT_API_KEY" not in env, name  # a key (Prefect Cloud's) would win over the auth string
    # the S3 keys reach the workers as the AWS variables: the workers' own user, never MinIO's root
    for name in ("worker-cpu", "worker-gpu", "setup"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"].startswith("${TTFT_S3_ACCESS_KEY:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${TTFT_S3_SECRET_KEY:?"), name
        assert not any("MINIO_ROOT" in v for v in env.values()), name
    root_users = {n for n, s in services.items() if "MINIO_ROOT_PASSWORD" in (s.get("environment") or {})}
    assert root_users == {"minio", "minio-init"}


def test_the_auth_string_guards_the_api_but_not_the_health_probe():
    """What the compose healthcheck and the clients rely on, against the pinned Prefect itself."""
    import base64

    from prefect.client.orchestration import get_client
    from prefect.server.api.server import create_api_app
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_SERVER_API_AUTH_STRING,
        temporary_settings,
    )
    from starlette.testclient import TestClient

    def basic(auth: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}

    with temporary_settings({PREFECT_SERVER_API_AUTH_STRING: "admin:0123abcd"}):
        api = TestClient(create_api_app(ignore_cache=True))
        assert api.get("/health").status_code == 200  # the server's healthcheck needs no secret
        assert api.get("/admin/version").status_code == 401
        assert api.get("/admin/version", headers=basic("admin:wrong")).status_code == 401
        assert api.get("/admin/version", headers=basic("admin:0123abcd")).status_code == 200
    with temporary_settings(
        {PREFECT_API_URL: "http://prefect-server:4200/api", PREFECT_API_AUTH_STRING: "admin:0123abcd"}
    ):
        client = get_client(sync_client=True)
        assert client._client.headers["authorization"] == basic("admin:0123abcd")["Authorization"]


def test_env_example_lists_every_required_variable_and_no_secret():
    example = _env_example()
    assert set(example) == _required_variables()
    for name in SECRETS:
        assert example[name] == "", f"{name}: a copied example must not start a stack with a known secret"
    assert example["TTFT_S3_ACCESS_KEY"] != example["MINIO_ROOT_USER"]
    text = (INFRA / ".env.example").read_text()
    assert "openssl rand -hex" in text
    for name in OPTIONAL:
        assert f"# {name}={OPTIONAL[name]}" in text  # documented, commented out: the default holds
    readme = (INFRA / "README.md").read_text()
    assert "openssl rand -hex 24" in readme and "infra/.env" in readme
    for name in _required_variables():
        assert name in readme, name


def test_infra_env_is_git_ignored_and_out_of_the_image():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "infra/.env is not git-ignored"
    kept = subprocess.run(["git", "check-ignore", "-q", "infra/.env.example"], cwd=ROOT, check=False)
    assert kept.returncode == 1, "infra/.env.example must be committed"
    # Dockerfile.dockerignore, read as BuildKit does (the last matching line wins): infra/ goes
    # into the build context, its .env does not
    patterns = [ln for ln in (INFRA / "Dockerfile.dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert _in_context("infra/setup.sh", patterns) and _in_context("infra/prefect.yaml", patterns)
    for path in ("infra/.env", ".env", "infra/.env.local"):
        assert not _in_context(path, patterns), path


def _in_context(path: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatchcase

    included = True
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatchcase(p, pattern) or fnmatchcase(p, pattern.removeprefix("**/")) for p in prefixes):
            included = negated
    return included


def test_no_credentials_in_deployment_parameters():
    """The UI shows parameters: S3 endpoints and keys stay in the workers' environment."""
    text = (INFRA / "prefect.yaml").read_text()
    for name in ("AWS_", "minio", "endpoint_url", "storage_options", "password", "auth_string", "secret"):
        assert all(name.lower() not in v.lower() for _, v in _strings(_prefect_yaml())), name
    for deployment in _prefect_yaml()["deployments"]:
        keys = {k for k, _ in _strings(deployment.get("parameters") or {})}
        assert not {k for k in keys if re.search(r"key|secret|password|token|storage_options|endpoint", k, re.I)}
    assert not any(literal in text.lower() for literal in LITERALS)


def test_only_the_ui_is_published_and_only_on_localhost_by_default():
    compose = _compose()
    services, networks = compose["services"], compose["networks"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"prefect-server"}
    assert published["prefect-server"] == ["${TTFT_BIND_ADDRESS:-127.0.0.1}:4200:4200"]
    console = yaml.safe_load((INFRA / "docker-compose.console.yml").read_text())["services"]
    assert set(console) == {"minio"}  # the optional file publishes the MinIO console, nothing else
    for ports in [*published.values(), console["minio"]["ports"]]:
        for port in ports:
            host, _, _ = _interpolate(port).rpartition(":")[0].rpartition(":")
            assert host == "127.0.0.1", port  # never every interface unless the operator says so
    # Postgres and MinIO only on the internal network, which has no route out
    assert networks["internal"] == {"internal": True}
    for name in ("postgres", "minio", "minio-init", "setup"):
        assert services[name]["networks"] == ["internal"], name
    for name, service in services.items():
        assert service.get("networks"), f"{name} would join the default network"
        assert "network_mode" not in service, name
        if service.get("ports"):  # a published port needs a network that is not internal
            assert any(not (networks[n] or {}).get("internal") for n in service["networks"]), name
    # ... and the UI's API address matches the published port
    assert _interpolate(services["prefect-server"]["environment"]["PREFECT_UI_API_URL"]) == "http://127.0.0.1:4200/api"


def test_every_image_is_pinned():
    services = _compose()["services"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    [prefect_pin] = re.findall(r"^prefect==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
        assert "${" not in image, f"{name}: {image}"
        if service.get("build"):
            assert image == f"ttft-archive-worker:{version}", name  # the project's version
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{prefect_pin}-python3.11"
    assert _prefect_yaml()["prefect-version"] == prefect_pin
    [base] = [ln.split()[1] for ln in (INFRA / "Dockerfile").read_text().splitlines() if ln.startswith("FROM")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base


def test_the_gpu_worker_reserves_the_gpu_the_standard_way():
    services = _compose()["services"]
    [device] = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert ("count" in device) != ("device_ids" in device)  # one or the other, as compose requires
    assert device.get("count") in (None, "all") or int(device["count"]) >= 1
    assert "runtime" not in services["worker-gpu"]
    assert "compute" in services["worker-gpu"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"]  # CUDA, not only nvidia-smi
    for name, service in services.items():
        if name != "worker-gpu":
            assert "deploy" not in service and "runtime" not in service, name


def test_every_long_running_service_has_a_healthcheck_and_waits_for_healthy_ones():
    services = _compose()["services"]
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"setup", "minio-init"}
    for name, service in services.items():
        if name not in one_shot:
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL") and not service["healthcheck"].get("disable"), name
        for dependency, condition in (service.get("depends_on") or {}).items():
            condition = condition["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has none"
            else:
                assert condition == "service_completed_successfully" and dependency in one_shot, name
    waits = {name: set(s.get("depends_on") or {}) for name, s in services.items()}
    assert waits["prefect-server"] == {"postgres"}
    assert {"prefect-server", "minio-init"} <= waits["setup"] and waits["minio-init"] == {"minio"}
    for name in ("worker-cpu", "worker-gpu"):
        assert {"setup", "prefect-server"} <= waits[name]
        assert services[name]["depends_on"]["prefect-server"]["condition"] == "service_healthy"


def test_the_workers_healthcheck_is_prefects_own():
    """`--with-healthcheck` serves /health on the worker webserver port: 200 while the worker polls
    the API (which it can only do with its auth string), 503 after."""
    from prefect.settings import get_current_settings
    from prefect.workers.server import _build_healthcheck_server
    from starlette.testclient import TestClient

    services = _compose()["services"]
    port = get_current_settings().worker.webserver.port
    for name in ("worker-cpu", "worker-gpu"):
        assert "--with-healthcheck" in services[name]["command"].split(), name
        assert f"http://127.0.0.1:{port}/health" in " ".join(services[name]["healthcheck"]["test"]), name
    for healthy, status in ((True, 200), (False, 503)):
        app = _build_healthcheck_server(lambda healthy=healthy: healthy).config.app
        assert TestClient(app).get("/health").status_code == status


def test_the_stack_scripts_parse_and_print_no_secret():
    import shutil
    import subprocess

    compose = _compose()["services"]
    [mount] = compose["minio-init"]["volumes"]
    source, target, mode = mount.split(":")
    assert (INFRA / source).resolve() == INFRA / "minio-init.sh" and mode == "ro"
    assert compose["minio-init"]["entrypoint"] == ["/bin/sh", target]
    for script in ("setup.sh", "minio-init.sh"):
        text = (INFRA / script).read_text()
        assert "set -x" not in text and "set -eux" not in text, script
        assert not re.search(r"echo[^\n]*\$\{?(\w*(SECRET|PASSWORD|AUTH)\w*)", text), script
        if shutil.which("sh"):
            assert subprocess.run(["sh", "-n", str(INFRA / script)], check=False).returncode == 0, script
    init = (INFRA / "minio-init.sh").read_text()
    # the root account is passed in the environment, not on mc's command line
    assert "MC_HOST_local=" in init and "mc alias set" not in init
    assert '"arn:aws:s3:::ttft"' in init and '"arn:aws:s3:::ttft/*"' in init and "s3:*" not in init
    bucket = {urlparts.split("/")[2] for _, urlparts in _strings(_prefect_yaml()) if urlparts.startswith("s3://")}
    assert bucket == {"ttft"}  # the deployments use the bucket the workers' user may use


@pytest.mark.parametrize(
    "attached, policy", [(False, ""), (True, "ttft-archive"), (True, "readwrite")], ids=["first-run", "rerun", "broken"]
)
def test_minio_init_makes_a_bucket_and_a_user_limited_to_it(tmp_path, attached, policy):
    """infra/minio-init.sh against a stand-in `mc` that records its calls: the root account only in
    the environment, the workers' user with a policy on the bucket `ttft`, no secret printed."""
    import json
    import shutil
    import subprocess

    if shutil.which("sh") is None:
        pytest.skip("no sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(
        "#!/bin/sh\n"
        'echo "$MC_HOST_local|$*" >> "$MC_LOG"\n'
        'case "$*" in\n'
        '  "admin policy create "*) cp "$6" "$TMPDIR/policy.seen" ;;\n'
        f'  "admin policy attach "*) {"exit 1" if attached else "true"} ;;\n'
        '  "admin user info "*) echo "AccessKey: $5"; echo "PolicyName: $MC_POLICY" ;;\n'
        "esac\n"
    )
    (bin_dir / "mc").chmod(0o755)
    secrets = {"MINIO_ROOT_PASSWORD": "root0123abcd", "TTFT_S3_SECRET_KEY": "worker0123abcd"}
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "MC_LOG": str(tmp_path / "mc.log"),
        "MINIO_ROOT_USER": "ttft-root",
        "TTFT_S3_ACCESS_KEY": "ttft-worker",
        "MC_POLICY": policy,
        **secrets,
    }
    run = subprocess.run(["sh", str(INFRA / "minio-init.sh")], env=env, capture_output=True, text=True, check=False)
    if policy == "readwrite":  # attaching failed and the user does not hold the policy: stop
        assert run.returncode == 1 and "could not attach" in run.stderr
        return
    assert run.returncode == 0, run.stderr
    assert not any(s in run.stdout + run.stderr for s in secrets.values())
    calls = [line.split("|", 1) for line in (tmp_path / "mc.log").read_text().splitlines()]
    assert all(host == "http://ttft-root:root0123abcd@minio:9000" for host, _ in calls)
    assert not any("root0123abcd" in argv for _, argv in calls)  # never on a command line
    argv = [a for _, a in calls]
    assert "mb --ignore-existing local/ttft" in argv
    assert "admin user add local ttft-worker worker0123abcd" in argv
    assert "admin policy attach local ttft-archive --user ttft-worker" in argv
    policy = json.loads((tmp_path / "policy.seen").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::ttft", "arn:aws:s3:::ttft/*"}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    # the workers' user must not be the root account
    env["TTFT_S3_ACCESS_KEY"] = "ttft-root"
    run = subprocess.run(["sh", str(INFRA / "minio-init.sh")], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "must differ" in run.stderr
