"""Crash tests: an ingest killed with SIGKILL at any point, then run again, ends equal to a clean
run: the same tile records (bitstreams, keys, figures, masks), the same listing, `verify` clean.

Kill points come from the archive's crash hook (TTFT_KILL_AFTER_WRITES=N: SIGKILL right after the
N-th store write, adapters/archive_store.py): after the first and the last write of every phase (root,
item, profile, tiles, shards, completion marker, cleanup), and random writes for several seeds; one more
kill lands at a random moment, by watching the tile chunks appear. A few kills run
`python -m ttft_archive.flows.cli ingest` itself; the sweeps run the same `main` in processes
forked from a server that imported it once (an import costs 10 s here; the kill is as real).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttft_archive.adapters import archive_store
from ttft_archive.adapters.archive import KILL_AFTER_WRITES

from ..conftest import ROOT, SAMPLES
from ..s3_server import moto_s3
from .common import FAST, cli, crop_raster, killed_fork, state, tree

PARTIAL = re.compile(r".*/?(zarr|\d+)\.[0-9a-f]{32}\.partial")  # zarr's atomic-write temporary file
CT_SLICE = SAMPLES / "ct_3slice_01.dcm"
DICOM_FAST = (*FAST[:-1], "128")  # 16 tiles of the 512 px slice
PHASES = ("root", "item", "profile", "tile", "shard", "marker", "cleanup")


def phase(key: str) -> str:
    """Which phase of an ingest a store write (or delete) belongs to."""
    if key == "zarr.json":
        return "root"
    if "/tiles/c/" in key:
        return "tile"
    if "/shards/" in key:
        return "shard"
    if key.endswith(("/tiles", "/index")):  # the tile records the shards now hold, removed
        return "cleanup"
    if "/profiles/" in key:
        return "profile"
    return "item"


def written_keys(monkeypatch, run) -> list[str]:
    """The keys an ingest writes, in the order the crash hook counts them."""
    keys: list[str] = []
    for name in ("set", "set_if_not_exists", "delete", "delete_dir"):
        original = getattr(archive_store._ArchiveStore, name)

        def spy(self, key, *args, _original=original):
            keys.append(key)
            return _original(self, key, *args)

        monkeypatch.setattr(archive_store._ArchiveStore, name, spy)
    run()
    monkeypatch.undo()
    return keys


def kill_points(keys: list[str]) -> list[int]:
    """Right after the first and the last write of the item, profile, tile and shard phases, and
    the last of the root, completion-marker (a profile write after the shards: index and marker
    in one) and cleanup phases."""
    phases, seen_shard = [], False
    for key in keys:
        p = phase(key)
        seen_shard |= p == "shard"
        phases.append("marker" if p == "profile" and seen_shard else p)
    assert set(phases) == set(PHASES), phases
    points = set()
    for p in PHASES:
        at = [i + 1 for i, q in enumerate(phases) if q == p]
        points |= {at[0], at[-1]} if p in ("item", "profile", "tile", "shard") else {at[-1]}
    return sorted(points)


def killed_process(argv: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ttft_archive.flows.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=os.environ | env,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return crop_raster(tmp_path_factory.mktemp("source") / "scene.tif")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, source):
    """A clean run: its archive state, and the keys it writes in order."""
    url = tmp_path_factory.mktemp("clean") / "a.zarr"
    with pytest.MonkeyPatch.context() as mp:
        keys = written_keys(mp, lambda: cli("ingest", source, "--archive", url, *FAST))
    return state(str(url)), keys, tree(url).keys()


def rerun_equals_clean(url, source, clean_state, storage_options=None, files=None, options=FAST):
    code, _, err = cli("ls", "--archive", url)  # what a user sees after the crash: a listing, or one line
    assert "Traceback" not in err and (code == 0 or err.startswith("ttft: error: ")), err
    code, _, err = cli("ingest", source, "--archive", url, *options)
    assert code == 0, err
    assert state(str(url), storage_options) == clean_state
    if files is not None:  # nothing left over but the temporary files of writes the kill cut short
        left = tree(url).keys()
        assert {f for f in left if not f.endswith(".partial")} == files
        assert all(PARTIAL.fullmatch(f) for f in left - files), left - files


@pytest.fixture(scope="module")
def dicom_clean(tmp_path_factory):
    """A clean ingest of the bundled CT slice: 16 tiles, the slice header and its pixel exceptions
    (the padding outside the reconstruction field) beside them."""
    url = tmp_path_factory.mktemp("dicom-clean") / "a.zarr"
    with pytest.MonkeyPatch.context() as mp:
        keys = written_keys(mp, lambda: cli("ingest", CT_SLICE, "--archive", url, *DICOM_FAST))
    return state(str(url)), keys, tree(url).keys()


def test_a_dicom_ingest_killed_while_its_item_is_made_reruns_to_a_clean_archive(tmp_path, forks, dicom_clean):
    """The writes a series adds to a raster's (its slice headers and pixel exceptions, in the item
    phase): killed after each of them, and after the first tile; the other phases are a raster's."""
    clean_state, keys, files = dicom_clean
    points = []
    for array in ("/pixel_exceptions", "/headers"):
        at = [i + 1 for i, k in enumerate(keys) if array in k]
        assert at, array
        points += [at[0], at[-1]]
    points.append(next(i + 1 for i, k in enumerate(keys) if phase(k) == "tile"))
    for n in sorted(set(points)):
        url = tmp_path / f"killed-{n}.zarr"
        code = killed_fork(forks, ["ingest", CT_SLICE, "--archive", url, *DICOM_FAST], {KILL_AFTER_WRITES: str(n)})
        assert code == -signal.SIGKILL, (n, code)
        rerun_equals_clean(url, CT_SLICE, clean_state, files=files, options=DICOM_FAST)


def test_a_local_ingest_killed_after_each_phase_reruns_to_a_clean_archive(tmp_path, forks, source, clean):
    clean_state, keys, files = clean
    for n in kill_points(keys):
        url = tmp_path / f"killed-{n}.zarr"
        code = killed_fork(forks, ["ingest", source, "--archive", url, *FAST], {KILL_AFTER_WRITES: str(n)})
        assert code == -signal.SIGKILL, (n, code)
        rerun_equals_clean(url, source, clean_state, files=files)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_local_ingest_killed_at_random_writes_reruns_to_a_clean_archive(tmp_path, forks, source, clean, seed):
    clean_state, keys, files = clean
    for n in sorted(random.Random(seed).sample(range(1, len(keys) + 1), 2)):
        url = tmp_path / f"killed-{n}.zarr"
        code = killed_fork(forks, ["ingest", source, "--archive", url, *FAST], {KILL_AFTER_WRITES: str(n)})
        assert code == -signal.SIGKILL, (n, code)
        rerun_equals_clean(url, source, clean_state, files=files)


def test_the_command_killed_by_the_hook_reruns_to_a_clean_archive(tmp_path, source, clean):
    clean_state, keys, files = clean
    url = tmp_path / "a.zarr"
    middle = next(i + 1 for i, k in enumerate(keys) if phase(k) == "tile") + 1  # two tiles in
    run = killed_process(["ingest", source, "--archive", url, *FAST], {KILL_AFTER_WRITES: str(middle)})
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert len(list(url.rglob("tiles/c/*/*/*"))) == 2
    rerun_equals_clean(url, source, clean_state, files=files)


def test_the_command_killed_at_a_random_moment_reruns_to_a_clean_archive(tmp_path, source, clean):
    """SIGKILL from outside, as soon as a random number of tile chunks is on disk."""
    clean_state, _, files = clean
    url = tmp_path / "a.zarr"
    want = random.Random(os.getpid()).randint(1, 3)
    process = subprocess.Popen(
        [sys.executable, "-m", "ttft_archive.flows.cli", "ingest", str(source), "--archive", str(url), *FAST],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if len(list(url.glob("items/*/profiles/*/tiles/c/*/*/*"))) >= want:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(60)
    assert process.returncode in (-signal.SIGKILL, 0), process.stderr.read()
    rerun_equals_clean(url, source, clean_state, files=files)


def test_an_s3_ingest_killed_in_three_phases_reruns_to_a_clean_archive(monkeypatch, forks, source):
    with moto_s3() as (options, bucket):
        monkeypatch.setenv("TTFT_STORAGE_OPTIONS", json.dumps(options))
        clean_url = f"s3://{bucket}/clean"
        with pytest.MonkeyPatch.context() as mp:
            keys = written_keys(mp, lambda: cli("ingest", source, "--archive", clean_url, *FAST))
        clean_state = state(clean_url, options)
        assert clean_state[2] == [] and clean_state[1][0]["profiles"][0]["complete"]
        env = {"TTFT_STORAGE_OPTIONS": json.dumps(options)}
        points = kill_points(keys)
        for n in points[1::3]:  # three, early, midway and late (each is 10 s of moto here)
            url = f"s3://{bucket}/killed-{n}"
            code = killed_fork(forks, ["ingest", source, "--archive", url, *FAST], env | {KILL_AFTER_WRITES: str(n)})
            assert code == -signal.SIGKILL, (n, code)
            rerun_equals_clean(url, source, clean_state, options)
