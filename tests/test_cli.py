import json
import subprocess
import sys

import imagecodecs
import numpy as np
import pytest

from .conftest import ROOT


def ttft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ttft_archive.flows.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_codecs_lists_backbones_and_sizes_as_json():
    run = ttft("codecs", "--json")
    assert run.returncode == 0, run.stderr
    listing = json.loads(run.stdout)
    assert listing["backbones"] == ["checkerboard", "hyperprior", "tic"]
    sizes = {s["name"]: s for s in listing["sizes"]}
    # the context adds to the entropy model, not to the transforms that LoRA adapts
    assert sizes["checkerboard-small"]["encoder_parameters"] == sizes["hyperprior-small"]["encoder_parameters"]
    assert sizes["tic"]["config"]["N"] == 128 and sizes["tic"]["config"]["M"] == 192
    assert sizes["hyperprior-small"]["encoder_parameters"] < sizes["hyperprior"]["encoder_parameters"]
    assert isinstance(listing["codecs"], list)


def test_roundtrip_reports_the_real_byte_count():
    run = ttft("roundtrip", "--codec", "hyperprior-small", "--ttft-steps", "0", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["bytes"] > 100
    assert report["bpp"] == 8 * report["bytes"] / (report["height"] * report["width"])
    assert report["height"] == report["width"] == 256


def test_user_errors_print_one_line_and_exit_non_zero(tmp_path, capsys):
    from ttft_archive.flows.cli import main

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    deep = tmp_path / "rgb48.png"  # Pillow would open it as 8-bit RGB, dropping the low bytes
    deep.write_bytes(imagecodecs.png_encode(np.full((32, 32, 3), 40000, np.uint16)))
    run = ttft("roundtrip", str(broken))  # once through a real process: exit status and stderr
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "broken.png" in run.stderr
    for args, needle in (
        (("roundtrip", str(tmp_path / "missing.png")), "missing.png"),
        (("roundtrip", str(broken)), "broken.png"),
        (("roundtrip", str(deep)), "rgb48.png: samples of more than 8 bits"),
        (("roundtrip", "--codec", "no-such-codec"), "no-such-codec"),
        (("roundtrip", "--task", "no-such-task"), "no-such-task"),
        (("roundtrip", "--task", "ndvi"), "needs 4 channels"),
        (("roundtrip", "--ttft-steps", "-1"), "ingest option ttft_steps"),
        (("ingest", str(broken), "--archive", str(tmp_path / "a.zarr"), "--tile", "7"), "ingest option tile"),
        (("ingest", str(broken), "--archive", str(tmp_path / "a.zarr"), "--bands", "1,x"), "ingest option bands"),
        (("train-base", "x", str(tmp_path), "--steps", "0"), "--steps"),
        (("roundtrip", "--ttft-steps", "1", "--device", "gpu"), "device 'gpu': expected auto, cpu, cuda or cuda:N"),
        (("train-base", "x", str(tmp_path), "--device", "cuda:7"), "device 'cuda:7'"),
        (("query", "--archive", str(tmp_path / "none.zarr"), "--item", "x", "--out", "x.tif"), "no archive there"),
        (
            ("query", "--archive", str(tmp_path / "none.zarr"), "--item", "x", "--bbox", "1,2,3", "--out", "x.tif"),
            "XMIN,YMIN,XMAX,YMAX",
        ),
        # a western bound starts with a dash and is still the value of --bbox
        (
            ("query", "--archive", str(tmp_path / "none.zarr"), "--item", "x", "--bbox", "-71,42,-70,43", "--out", "x"),
            "no archive there",
        ),
    ):
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


def test_tasks_lists_the_builtins():
    run = ttft("tasks", "--json")
    assert run.returncode == 0, run.stderr
    names = {t["name"] for t in json.loads(run.stdout)}
    assert {"pixel", "edges", "ndvi", "water", "ct-lung-window", "ct-bone-mask"} <= names


def test_version_and_every_option_shows_its_default(capsys):
    from ttft_archive import __version__
    from ttft_archive.flows.cli import main

    run = ttft("--version")  # the installed entry point, in a process of its own
    assert run.returncode == 0 and run.stdout.strip() == f"ttft {__version__}"

    def helped(command: str) -> str:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # unwrapped

    ingest = helped("ingest")
    assert "(default: pixel)" in ingest  # IngestOptions' defaults
    assert "else 512 for a raster and 512 for a DICOM series" in ingest  # a default that depends on the input
    assert "(default: 0.0067)" in helped("train-base")
