from pathlib import Path

import numpy as np
import pytest
import torch

from ttft_archive.adapters.crops import CropSampler
from ttft_archive.adapters.image_files import read_rgb_u8
from ttft_archive.adapters.training_sets import GRAY16_FULL, open_training_set
from ttft_archive.ttft_core import TTFTError

from .conftest import SAMPLES


def test_gray16_trains_on_ct_slices_and_single_16_bit_raster_bands_on_one_scale():
    data = open_training_set("gray16", [SAMPLES / "ct_3slice_01.dcm", SAMPLES / "landsat8_224078_rgb_crop256.tif"])
    names = [f.name for f in data.files]
    assert names == ["ct_3slice_01.dcm"] + [f"landsat8_224078_rgb_crop256.tif#{b}" for b in (1, 2, 3)]
    images = [data.read(f) for f in data.files]
    assert all(img.shape[0] == 1 for img in images)
    assert [int(img.max()) for img in images[1:]] == [GRAY16_FULL] * 3  # each band by its own maximum
    assert 0 <= int(images[0].min()) and int(images[0].max()) <= GRAY16_FULL
    crops = CropSampler(data.files, data.read, 64, seed=0, scale=data.scale).batch(4)
    assert crops.shape == (4, 1, 64, 64) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    assert np.isclose(data.scale, GRAY16_FULL)


def test_gray16_reads_an_8_bit_photograph_as_its_luma_on_the_16_bit_scale():
    data = open_training_set("gray16", [SAMPLES / "kodim23_crop256.png"])
    (image,) = [data.read(f) for f in data.files]
    rgb = read_rgb_u8(SAMPLES / "kodim23_crop256.png").double()
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert image.shape == (1, 256, 256) and int(image.max()) <= GRAY16_FULL
    assert int((image % 257).abs().max()) == 0  # whole 8-bit levels, 255 -> 65535
    assert float((image[0] / 257 - luma).abs().max()) <= 0.5 + 1e-9  # the luma rounded
    assert "luma" in data.normalisation


def test_gray16_reads_an_mr_by_its_stored_bits_as_an_ingest_maps_it(tmp_path):
    """An MR (no rescale to Hounsfield units) trains as the archive codes it: stored value over
    the stored bits' full scale, not as HU clipped and offset like a CT."""
    import pydicom

    ds = pydicom.dcmread(SAMPLES / "ct_3slice_01.dcm")
    values = (np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) % 601).astype(np.uint16)
    ds.Modality, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = "MR", 12, 11, 0
    del ds.RescaleIntercept, ds.RescaleSlope
    ds.PixelData = values.tobytes()
    ds.save_as(tmp_path / "mr.dcm")
    data = open_training_set("gray16", [tmp_path / "mr.dcm", SAMPLES / "ct_3slice_01.dcm"])
    mr, ct = (data.read(f)[0].numpy() for f in data.files)
    assert np.array_equal(mr, np.rint(values / 4095 * GRAY16_FULL))
    from ttft_archive.adapters.dicom import read_hu

    hu = np.clip(read_hu(SAMPLES / "ct_3slice_01.dcm"), -1024, 3071)
    assert np.array_equal(ct, np.rint((hu + 1024) / 4095 * GRAY16_FULL))
    assert "stored value / (2^bits stored - 1)" in data.normalisation


def test_rgb_rasters_trains_on_photographs_and_16_bit_scenes_by_three_bands():
    data = open_training_set(
        "rgb-rasters", [SAMPLES / "kodim23_crop256.png", SAMPLES / "landsat8_224078_rgb_crop256.tif"]
    )
    assert [f.name for f in data.files] == ["kodim23_crop256.png", "landsat8_224078_rgb_crop256.tif#1"]
    photo, scene = (data.read(f) for f in data.files)
    assert torch.equal(photo, read_rgb_u8(SAMPLES / "kodim23_crop256.png"))
    assert scene.shape == (3, 256, 256) and scene.dtype == torch.uint8
    assert scene.flatten(1).max(1).values.tolist() == [255, 255, 255]  # each band by its own maximum
    from ttft_archive.adapters.raster import read_window

    bands = read_window(SAMPLES / "landsat8_224078_rgb_crop256.tif").astype(np.float64)
    expected = bands / bands.reshape(3, -1).max(1)[:, None, None] * 255
    assert float((scene.double() - torch.from_numpy(expected)).abs().max()) <= 0.5 + 1e-9
    assert CropSampler(data.files, data.read, 64, seed=0, scale=data.scale).batch(2).shape == (2, 3, 64, 64)
    with pytest.raises(TTFTError, match="no 8-bit images or 16-bit GeoTIFFs of three bands"):
        open_training_set("rgb-rasters", [SAMPLES / "ct_3slice_01.dcm"])


def test_a_gray16_folder_without_dicom_or_16_bit_rasters_is_refused(tmp_path):
    with pytest.raises(TTFTError, match="no DICOM files, 16-bit GeoTIFFs or 8-bit images"):
        open_training_set("gray16", [tmp_path])
    with pytest.raises(TTFTError, match="unknown training modality"):
        open_training_set("rgb16", [tmp_path])


def test_crops_by_area_follow_pixels_not_files():
    """One 64x64 image and one 256x256: uniform picks split the crops evenly; by area, about 1 in 17
    comes from the small one."""
    images = {"small": torch.zeros(1, 64, 64, dtype=torch.int32), "large": torch.ones(1, 256, 256, dtype=torch.int32)}
    files = [Path("small"), Path("large")]

    def share_small(by_area: bool) -> float:
        sampler = CropSampler(files, lambda p: images[p.name], 32, seed=3, scale=1.0, by_area=by_area)
        crops = sampler.batch(2000)
        return float((crops.flatten(1).max(1).values == 0).float().mean())

    assert 0.45 < share_small(False) < 0.55
    assert 0.04 < share_small(True) < 0.08


def test_level_augmented_crops_cover_the_range_as_windows_of_the_crop():
    """With levels, each crop is itself or its negative under a window offset + gain * x (gain
    0.25 to 1) that stays in [0, 1]: a dark ramp image comes back at every level, bright ones
    included, half of the crops inverted; without, crops are as before; a seed repeats them."""
    ramp = (torch.arange(64, dtype=torch.int32) * 4)[:, None].repeat(1, 1, 64)  # rows 0..252 of 1000: dark
    plain = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0).batch(400)
    assert float(plain.max()) <= 0.2521 and bool((plain[:, 0, 1, 0] > plain[:, 0, 0, 0]).all())
    sampler = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=1.0)
    crops = sampler.batch(400)
    assert float(crops.min()) >= 0.0 and float(crops.max()) <= 1.0
    assert float((crops.flatten(1).mean(1) > 0.6).float().mean()) > 0.2  # bright crops now occur
    slopes = crops[:, 0, 1, 0] - crops[:, 0, 0, 0]  # the ramp rises by 0.004 a row: gain x that
    assert 0.35 < float((slopes < 0).float().mean()) < 0.65  # about half inverted
    assert float(slopes.abs().min()) >= 0.25 * 0.004 - 1e-6 and float(slopes.abs().max()) <= 0.004 + 1e-6
    again = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=1.0).batch(400)
    assert torch.equal(crops, again)
    some = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=0.25).batch(400)
    untouched = (some[:, 0, 1, 0] - some[:, 0, 0, 0] - 0.004).abs() < 1e-6  # as without levels
    assert 0.65 < float(untouched.float().mean()) < 0.85


def test_a_lower_gain_bound_makes_narrower_windows():
    """--level-gain-min widens the windows' gains down to it (a 12-bit MR spanning 0-600 sits in
    0.15 of the range); the default draws the same crops as before it existed."""
    ramp = (torch.arange(64, dtype=torch.int32) * 4)[:, None].repeat(1, 1, 64)
    default = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=1.0).batch(400)
    same = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=1.0, gain_min=0.25).batch(400)
    assert torch.equal(default, same)
    low = CropSampler([Path("r")], lambda p: ramp, 32, seed=5, scale=1000.0, levels=1.0, gain_min=0.05).batch(400)
    gains = (low[:, 0, 1, 0] - low[:, 0, 0, 0]).abs() / 0.004
    assert float(gains.min()) >= 0.05 - 1e-4 and float(gains.max()) <= 1 + 1e-4
    assert float((gains < 0.25).float().mean()) > 0.1  # narrower than the default allows
    assert float(low.min()) >= 0.0 and float(low.max()) <= 1.0
