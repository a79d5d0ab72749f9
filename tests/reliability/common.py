"""What the refusal, crash, concurrency and storage-fault tests share: a small raster, the
command line run in this process, an archive's bytes and records to compare."""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
from pathlib import Path

import pytest
import rasterio
from rasterio.windows import Window

from ttft_archive.adapters.archive import Archive
from ttft_archive.flows.jobs.tiles import listing, verify

from ..conftest import SAMPLES

LANDSAT = SAMPLES / "landsat8_224078_rgb_crop256.tif"
CODEC = "hyperprior-small"  # an untrained codec seeded alike everywhere: nothing to load
FAST = ("--codec", CODEC, "--ttft-steps", "0", "--tile", "64")  # 4 tiles of 64 on a 128 crop


def crop_raster(path: Path, size: int = 128, left: int = 0) -> Path:
    """A ``size`` x ``size`` crop of the bundled Landsat excerpt (3 bands, 16 bits, georeferenced)."""
    with rasterio.open(LANDSAT) as src:
        window = Window(left, 0, size, size)
        profile = src.profile | {
            "width": size,
            "height": size,
            "transform": src.window_transform(window),
            "tiled": False,
        }
        data = src.read(window=window)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def tree(path: Path) -> dict[str, str] | None:
    """Every file under ``path`` with the sha256 of its bytes; None when ``path`` is absent."""
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def cli(*argv: str) -> tuple[int, str, str]:
    """``ttft ARGV`` in this process: (exit status, stdout, stderr)."""
    from ttft_archive.flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def records(url: str, storage_options: dict | None = None) -> dict:
    """(item, profile, tile) -> its stored record, for every profile of the archive."""
    archive = Archive(url, storage_options, create=False)
    found = {}
    for item in archive.item_ids():
        for name in archive.profile_names(item):
            profile = archive.profile(item, name)
            for index in profile.indices():
                found[(item, name, index)] = profile.record(index)
    return found


def state(url: str, storage_options: dict | None = None) -> tuple[dict, list, list]:
    """What two archives must share to be equal: every tile record (bitstream, key, figures,
    mask), the listing, and verify's problems."""
    return records(url, storage_options), listing(url, storage_options), verify(url, None, storage_options)


def bitstreams(found: dict) -> dict:
    """The records without their TTFT seconds (the one figure a rerun measures anew)."""
    return {k: (r.key, r.state, r.data, r.fidelity, r.ttft_steps, r.mask_kind, r.mask) for k, r in found.items()}


def remove_tree_in_child(url: str, prefix: str, start) -> None:
    """What a forked process runs to remove ``prefix`` from the archive store at ``url`` once
    every process waiting on ``start`` (a barrier) is ready: exit 0, or 1 with the error."""
    from zarr.core.sync import sync

    from ttft_archive.adapters.archive_store import open_store

    start.wait()
    try:
        sync(open_store(url).delete_dir(prefix))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        os._exit(1)
    os._exit(0)


def _main_in_child(argv: list[str], env: dict) -> None:
    """What a forked process runs: the command line, with ``env`` set."""
    os.environ.update(env)
    from ttft_archive.flows.cli import main

    os._exit(main(argv))


@pytest.fixture(scope="session")
def forks():
    """Processes forked from a server that imported the command line once (an import costs 10 s
    here): they run `main` as `python -m ttft_archive.flows.cli` would, and die as it would."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ttft_archive.flows.cli", "ttft_archive.flows.jobs.raster", __name__])
    return context


def start_fork(forks, argv: list, env: dict | None = None):
    child = forks.Process(target=_main_in_child, args=([str(a) for a in argv], env or {}))
    child.start()
    return child


def killed_fork(forks, argv: list, env: dict | None = None) -> int:
    """Run ``ttft ARGV`` in a forked process to its end or its death: its exit code (-9: killed)."""
    child = start_fork(forks, argv, env)
    child.join(180)
    assert child.exitcode is not None, "the command neither ended nor was killed"
    return child.exitcode
