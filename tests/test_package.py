"""The package as an installed user meets it: one import name, no side effects on import, and the
product (ingest, query) apart from the measurement code."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = tuple(f"{ROOT / d}/" for d in ("ttft_archive", "ttft_core", "adapters", "configs", "flows"))


def run_python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    import os

    # the project's own folder off the path: what an installed copy sees from anywhere
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True)


def test_one_import_name_from_any_folder_and_no_generic_ones(tmp_path):
    done = run_python(
        "import importlib.util, ttft_archive, ttft_archive.flows.cli\n"
        "print(ttft_archive.__version__)\n"
        "print([n for n in ('adapters', 'flows', 'configs', 'ttft_core') if importlib.util.find_spec(n)])",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    version, squatted = done.stdout.split("\n")[:2]
    assert version and version != "0+unknown"
    assert squatted == "[]"


SPY_ON_FILTERS = """
import sys, warnings
added = []  # (the file that set a filter, the filter)


def spy(set_filter):
    def wrapper(*args, **kwargs):
        set_filter(*args, **kwargs)
        added.append((sys._getframe(1).f_code.co_filename, warnings.filters[0]))

    return wrapper


warnings.filterwarnings, warnings.simplefilter = spy(warnings.filterwarnings), spy(warnings.simplefilter)
"""


def test_importing_the_jobs_reads_no_task_specs_and_leaves_no_warning_filters(tmp_path):
    (tmp_path / "broken.yaml").write_text("not: a task spec\n")
    done = run_python(
        SPY_ON_FILTERS + "import json\n"
        "import ttft_archive.flows, ttft_archive.flows.jobs.raster, ttft_archive.flows.jobs.dicom\n"
        "import ttft_archive.flows.orchestration.prefect_flows, ttft_archive.adapters.archive\n"
        "from ttft_archive.ttft_core import tasks\n"
        f"ours = [f for f, flt in added if f.startswith({PACKAGE_FOLDERS!r}) and flt in warnings.filters]\n"
        "print(json.dumps({'filters_left': ours, 'registered': sorted(tasks._REGISTERED)}))",
        cwd=tmp_path,
        TTFT_TASK_PATH=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"filters_left": [], "registered": []}


def test_ingest_and_query_never_import_the_measurement_code(tmp_path):
    done = run_python(
        "import sys\n"
        "import ttft_archive.flows.jobs.query, ttft_archive.flows.jobs.raster, ttft_archive.flows.jobs.dicom\n"
        "import ttft_archive.flows.orchestration.prefect_flows, ttft_archive.flows.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('ttft_archive')))",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout
    for measurement in ("adapters.classical", "adapters.eval_sets", "flows.evaluation"):
        assert f"ttft_archive.{measurement}" not in loaded, measurement
    assert "ttft_archive.flows.jobs.raster" in loaded  # the listing is real
