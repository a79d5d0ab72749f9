"""Shared fixtures: real image crops (bundled excerpts always; the shared data set when it sits
beside the checkout) and tiny model configurations that keep the suite fast."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ttft_archive.adapters.dicom import read_hu
from ttft_archive.adapters.image_files import read_rgb
from ttft_archive.adapters.normalise import from_hu, from_scaled
from ttft_archive.adapters.raster import read_window
from ttft_archive.ttft_core import BackboneConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "adapters" / "samples"
SHARED = Path(os.environ.get("TTFT_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the suite tunes on the CPU wherever it runs: what it expects of bytes is what a CPU makes
os.environ.setdefault("TTFT_TTFT__DEVICE", "cpu")


def tiny_config(backbone: str, channels: int) -> BackboneConfig:
    if backbone == "tic":
        return BackboneConfig("tic", channels, N=16, M=24, depths=(1, 1, 1), heads=(2, 2, 2), window=4)
    return BackboneConfig(backbone, channels, N=16, M=24)  # hyperprior or checkerboard


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"the shared data set is not at {SHARED}: only bundled excerpts are tested")
    return SHARED


@pytest.fixture(scope="session")
def kodak_crop() -> torch.Tensor:
    return read_rgb(SAMPLES / "kodim23_crop256.png")


@pytest.fixture(scope="session")
def landsat_crop() -> torch.Tensor:
    bands = read_window(SAMPLES / "landsat8_224078_rgb_crop256.tif")
    return from_scaled(bands, 20000.0)


@pytest.fixture(scope="session")
def rgbn_crop() -> torch.Tensor:
    """Red, green, blue, NIR (5 m, uint8): the bands the spectral-index tasks need."""
    return from_scaled(read_window(SAMPLES / "rgbn_4band_20160517_crop192.tif"), 255.0)


@pytest.fixture(scope="session")
def ct_crop() -> torch.Tensor:
    return from_hu(read_hu(SAMPLES / "ct_3slice_01.dcm"))[None]


def crop(t: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return t[:, top : top + h, left : left + w].contiguous()


def assert_all_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect API (SQLite) for every test that runs flows in this process."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    # Prefect's 30 s to start its server is too short on two cores busy with other work
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def zoo_dir(tmp_path, monkeypatch):
    """An empty codec zoo in ``tmp_path/zoo`` in place of the shipped one."""
    from ttft_archive.adapters import zoo

    monkeypatch.setenv("TTFT_ZOO_PATH", str(tmp_path / "zoo"))
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "none")
    return tmp_path / "zoo"
