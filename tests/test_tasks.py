import pytest
import torch

from ttft_archive.adapters.zoo import find_codec
from ttft_archive.configs import load_settings
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.ttft_core import TTFTError
from ttft_archive.ttft_core.tasks import BUILTIN, describe_all, get_task

from .conftest import crop

SPECTRAL = ("ndvi", "ndwi", "water", "vegetation")
RGBN = {"red": 0, "green": 1, "blue": 2, "nir": 3}


def image_for(name: str, kodak_crop, ct_crop, rgbn_crop) -> torch.Tensor:
    if name.startswith("ct-"):
        return crop(ct_crop, 150, 150, 96, 96)
    if name in SPECTRAL:
        return rgbn_crop
    return crop(kodak_crop, 0, 0, 96, 96)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_task_is_differentiable_and_perfect_on_the_original(name, kodak_crop, ct_crop, rgbn_crop):
    task = get_task(name, bands=RGBN) if name in SPECTRAL else get_task(name)
    x = image_for(name, kodak_crop, ct_crop, rgbn_crop)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    noisy.requires_grad_(True)
    loss = task.loss(noisy, x)
    loss.backward()
    assert loss.item() > 0 and noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert task.loss(x, x).item() == 0
    perfect, degraded = task.metric(x, x), task.metric(noisy.detach(), x)
    if task.higher_is_better:
        assert degraded < perfect
    else:
        assert perfect == 0 and degraded > 0


def test_unknown_task_and_missing_bands_are_user_errors(kodak_crop):
    with pytest.raises(TTFTError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TTFTError, match="lacks nir"):
        get_task("ndvi", bands={"red": 0})
    with pytest.raises(TTFTError, match="needs 4 channels"):
        get_task("ndvi").metric(kodak_crop, kodak_crop)
    assert {t["name"] for t in describe_all()} == set(BUILTIN)


def test_mask_metrics_pool_over_a_set_where_per_image_they_flip_on_one_pixel():
    """A scene without water scores IoU 0 on one stray water pixel: averaged per image, the set's
    figure halves; pooled (as evaluation takes the mask tasks), it barely moves."""
    task = get_task("water", bands={"red": 0, "green": 1, "blue": 2, "nir": 3})
    land = torch.tensor([0.3, 0.2, 0.2, 0.6])[:, None, None].expand(4, 16, 16).clone()
    with_water = land.clone()
    with_water[1, :, :8], with_water[3, :, :8] = 0.6, 0.2  # left half: green above NIR
    stray = land.clone()
    stray[1, 0, 0], stray[3, 0, 0] = 0.6, 0.2
    originals, decoded = torch.stack([with_water, land]), torch.stack([with_water, stray])
    per_image = [task.metric(d, x) for d, x in zip(decoded, originals)]
    assert per_image == [1.0, 0.0]
    assert task.pooled and get_task("ct-bone-mask").pooled and not get_task("pixel").pooled
    assert task.metric(decoded, originals) == pytest.approx(128 / 129)


def test_ct_windows_price_their_loss_at_the_codecs_own_trade_off():
    # a window's loss is the MSE on HU stretched by 4095/width: TTFT weighs it by (width/4095)^2
    assert get_task("ct-mediastinum-window").lambda_scale == pytest.approx((350 / 4095) ** 2)
    assert get_task("ct-lung-window").lambda_scale == pytest.approx((1400 / 4095) ** 2)
    assert get_task("pixel").lambda_scale == get_task("ct-bone-mask").lambda_scale == 1.0
    settings = load_settings(ttft={"steps": 2})
    for task, scale in (("pixel", 1.0), ("ct-mediastinum-window", (350 / 4095) ** 2)):
        _, ttft = codec_setup.prepare(settings, "gray16-hyperprior-q00", 1, task=task)
        assert ttft.lmbda == pytest.approx(find_codec("gray16-hyperprior-q00").card["lambda"] * 255**2 * scale)
    # a weight the settings give is taken as it stands
    _, ttft = codec_setup.prepare(
        load_settings(ttft={"steps": 2, "lmbda": 3.0}), "gray16-hyperprior-q00", 1, task="ct-mediastinum-window"
    )
    assert ttft.lmbda == 3.0
