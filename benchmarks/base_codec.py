"""Rate-distortion of the shipped base codecs against JPEG 2000, HTJ2K and JPEG XL, from real
bytes, under the evaluation convention of docs/evaluation.md.

Parts (``--parts``):
- kodak: the rgb family (hyperprior and TIC) on the 24 Kodak images, PSNR and MS-SSIM over RGB;
  published Kodak curves (benchmarks/anchors/kodak_published.json) drawn beside them.
- ct: the gray16 family on every slice of ct_lung_A0002 (evaluation-only), PSNR over the stored
  12-bit range (HU + 1024, peak 4095) and inside the lung (W1400/L-700) and mediastinum (W350/L40)
  windows; reconstructions rounded to integers, as a DICOM writer stores them; each codec also at
  the clinical lossy ratios of 5:1 to 15:1 of the slice's lossless JPEG 2000 size.
- landsat: four 256x256 tiles of Landsat 8 scene 224077, bands 4-3-2 at 16 bits: the rgb family
  on the three bands together, the gray16 family band by band.
- landsat-bands: the same tiles' bands as twelve single-band images, each coded alone by the
  gray16 family and by the classical codecs (no colour transform to share): the comparison for a
  band an archive codes on its own (a panchromatic or thermal band, a scene's leftover band).
- gray8: the gray16 family on the 8-bit luma of the Kodak images.
- mr, cr, ect: the gray16 family on the other DICOM modalities of the shared set, each through
  the value mapping the archive gives it (adapters.dicom): the ten 64x64 frames of a 12-bit MR,
  four 512x512 crops of a 10-bit CR radiograph, the two 512x512 frames of an Enhanced CT
  (Hounsfield units by its Pixel Value Transformation); PSNR over the file's stored bits.
- mr12, cr15, ct693: the same on images of the pydicom-data package (installed by `make setup`):
  a 1024x1024 MR of 12 bits whose values span 0-600, four 512x512 crops of a 15-bit CR
  radiograph, a 512x512 CT slice of another scanner (14 bits, a reconstruction field to -2971 HU).

Each learned codec codes an image as an ingest does, in the image's own value window where its
family's archive default says so (the rgb family: ttft_core.value_window); ``--window tile`` or
``item`` sets it for every family. Each classical codec is swept per image to the set's target
rates (adapters.classical.RATES).
For every learned family and classical codec the JSON holds each image's rates and metrics, the
per-image BD-rates with their mean (``per_image_bd_rate_mean``, the headline) and median, and the
BD-rate of the mean curves; lossless sizes per codec give every rate a ratio.

Writes benchmarks/results/base_codec.json (or --out) and a plot per part beside it, named after it.

    .venv/bin/python benchmarks/base_codec.py [--kodak N] [--ct-every K] [--write-cards] [--dicom-window] [--window W]
        [--parts kodak,ct,landsat,landsat-bands,gray8,mr,cr,ect,mr12,cr15,ct693] [--learned-only [--keep LABEL,...] [--kept-from F.json]]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from ttft_archive.adapters import dicom, eval_sets  # noqa: E402
from ttft_archive.adapters.classical import CODECS, RATES, lossless_bytes, sweep  # noqa: E402
from ttft_archive.adapters.dicom import read_hu  # noqa: E402
from ttft_archive.adapters.image_files import read_luma_u8, read_rgb_u8  # noqa: E402
from ttft_archive.adapters.normalise import HU_MAX, HU_MIN, from_hu, to_hu  # noqa: E402
from ttft_archive.adapters.zoo import family_rate_points, list_codecs, load_codec  # noqa: E402
from ttft_archive.configs.settings import windowed  # noqa: E402
from ttft_archive.ttft_core import TileCodec, TTFTError  # noqa: E402
from ttft_archive.ttft_core.metrics import (  # noqa: E402
    bd_rate,
    gap_at_equal_rate,
    metric_at_rate,
    ms_ssim,
    per_image_bd_rate,
    per_image_curves,
    psnr,
)

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
BACKBONE = "hyperprior"  # of the rgb and gray16 curves (--backbone)
GRAY16 = "gray16"  # the one-channel family of the learned:gray16 curves (--gray16-family)
WINDOW = None  # value windows (--window): None, each family's archive default
ANCHORS = ROOT / "benchmarks" / "anchors" / "kodak_published.json"
WINDOWS = {"lung": (1400, -700), "mediastinum": (350, 40)}
CLINICAL_RATIOS = (5, 8, 10, 15)  # lossy ratios to the lossless JPEG 2000 size that CT archives use
COMMAND = ".venv/bin/python benchmarks/base_codec.py"
SINGLES = SHARED / "medical" / "singles"
CROPS = [(300, 300), (300, 900), (900, 300), (900, 900)]  # four 512x512 crops, top-left corners


def pydicom_data(name: str) -> Path:
    """A test image of the pydicom-data package, never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        sys.exit(f"base_codec: {name} comes with the pydicom-data package: pip install -c constraints.txt pydicom-data")
    return Path(path)


# part -> (where the file is, what it is, crops or None for every frame)
DICOM_IMAGES = {
    "mr": (lambda: SINGLES / "emri_small.dcm", "10 frames of an MR, 64x64", None),
    "cr": (lambda: SINGLES / "RG3_UNCI.dcm", "4 crops of 512x512 of a CR radiograph", CROPS),
    "ect": (lambda: SINGLES / "eCT_Supplemental.dcm", "2 frames of an Enhanced CT, 512x512", None),
    "mr12": (lambda: pydicom_data("MR2_UNCI.dcm"), "an MR, 1024x1024, values 0-600", None),
    "cr15": (lambda: pydicom_data("RG1_UNCI.dcm"), "4 crops of 512x512 of a CR radiograph", CROPS),
    "ct693": (lambda: pydicom_data("693_UNCI.dcm"), "a CT slice of another scanner, 512x512", None),
}


def dicom_part(name: str, window: bool = False) -> Part:
    where, description, crops = DICOM_IMAGES[name]
    return dicom_frames(where(), description, crops, window)


@dataclass
class Part:
    """One evaluation set: the integers a file stores for each image, how a learned codec codes
    an image (bytes and the reconstruction as those integers), and the figures of merit."""

    description: str
    names: list[str]
    stored: list[np.ndarray]
    learned: dict[str, Callable[[TileCodec, int], tuple[int, np.ndarray]]]  # label -> coder of image i
    families: dict[str, list]  # label -> rate points
    metrics: Callable[[np.ndarray, np.ndarray], dict]
    metric: str  # the headline metric
    rates: list[float]


def _compress(codec: TileCodec, x: torch.Tensor) -> bytes:
    """The image's bytes as an ingest codes it: in its own value window where the codec says so."""
    return codec.compress(x, window=codec.window_of(x))


def _psnr_int(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    return psnr(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)), peak=peak)


def _unit(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(a.astype(np.float32)) / 255
    return t.permute(2, 0, 1) if t.dim() == 3 else t[None]


def _code_8bit(arrays: list[np.ndarray]):
    return lambda codec, i: _code_8bit_image(codec, arrays[i])


def _code_8bit_image(codec: TileCodec, a: np.ndarray) -> tuple[int, np.ndarray]:
    data = _compress(codec, _unit(a))
    rec = (codec.decompress(data) * 255).round().clamp(0, 255).to(torch.uint8)
    return len(data), (rec.permute(1, 2, 0) if a.ndim == 3 else rec[0]).numpy()


def kodak(count: int) -> Part:
    files = sorted((SHARED / "natural").glob("kodim*.png"))[:count]

    def metrics(a: np.ndarray, b: np.ndarray) -> dict:
        return {"psnr": _psnr_int(a, b, 255), "ms_ssim": ms_ssim(_unit(a), _unit(b))}

    arrays = [read_rgb_u8(f).permute(1, 2, 0).numpy() for f in files]
    return Part(
        f"{len(files)} Kodak images (natural/)",
        [f.stem for f in files],
        arrays,
        {"learned:rgb": _code_8bit(arrays), "learned:rgb-tic": _code_8bit(arrays)},
        {"learned:rgb": family_rate_points("rgb", BACKBONE), "learned:rgb-tic": family_rate_points("rgb", "tic")},
        metrics,
        "psnr",
        RATES["kodak"],
    )


def gray8(count: int) -> Part:
    """The gray16 family on 8-bit content, its rates read as bits per 8-bit pixel: the BT.601
    luma of the Kodak images, PSNR at 8 bits."""
    files = sorted((SHARED / "natural").glob("kodim*.png"))[:count]
    arrays = [read_luma_u8(f) for f in files]
    return Part(
        f"luma of {len(files)} Kodak images (natural/), 8 bits",
        [f.stem for f in files],
        arrays,
        {"learned:gray16": _code_8bit(arrays)},
        {"learned:gray16": family_rate_points(GRAY16, BACKBONE)},
        lambda a, b: {"psnr": _psnr_int(a, b, 255)},
        "psnr",
        RATES["gray8"],
    )


def ct(every: int) -> Part:
    files = sorted((SHARED / "medical" / "ct_lung_A0002").glob("*.dcm"))[::every]

    def code(codec: TileCodec, i: int) -> tuple[int, np.ndarray]:
        data = _compress(codec, from_hu(stored[i].astype(np.float64) + HU_MIN)[None])
        rec = np.clip(np.rint(to_hu(codec.decompress(data)[0])), HU_MIN, HU_MAX) - HU_MIN
        return len(data), rec.astype(np.uint16)

    def metrics(a: np.ndarray, b: np.ndarray) -> dict:
        row = {"psnr_hu": _psnr_int(a, b, HU_MAX - HU_MIN)}
        for name, (width, level) in WINDOWS.items():
            low = level - width / 2 - HU_MIN
            wa, wb = (np.clip((v.astype(np.float64) - low) / width, 0, 1) for v in (a, b))
            row[f"psnr_{name}"] = _psnr_int(wa, wb, 1.0)
        return row

    stored = [(np.clip(np.rint(read_hu(f)), HU_MIN, HU_MAX) - HU_MIN).astype(np.uint16) for f in files]
    return Part(
        f"{len(files)} slices of ct_lung_A0002 (every {every}), 512x512, HU + 1024 as 12 bits",
        [f.stem for f in files],
        stored,
        {"learned:gray16": code},
        {"learned:gray16": family_rate_points(GRAY16, BACKBONE)},
        metrics,
        "psnr_hu",
        RATES["ct"],
    )


def dicom_frames(path: Path, description: str, crops: list[tuple[int, int]] | None, window: bool) -> Part:
    """Every frame of one DICOM file (or 512x512 crops of its one frame at ``crops``, top-left
    corners), coded as an ingest codes it, through the series' value mapping to [0, 1]. Compared
    as integers: a CT as the ct part takes it (HU + 1024 as 12 bits, PSNR at peak 4095), anything
    else in its stored values (PSNR over the stored bits); what the mapping cannot carry (the
    archive keeps it exactly) is compared as the mapping clips it, for the classical codecs too."""
    [series] = dicom.find_series([path])
    header = pydicom.dcmread(path, stop_before_pixels=True)
    units = [dicom.read_unit(series, i) for i in range(len(series.slices))]
    if crops:
        units = [units[0][y : y + 512, x : x + 512] for y, x in crops]
    if series.mapping == "hu":
        peak = HU_MAX - HU_MIN

        def integers(unit: np.ndarray) -> np.ndarray:
            return np.rint(np.asarray(unit, np.float64) * peak).astype(np.uint16)
    else:
        peak = 2.0**series.bits_stored - 1

        def integers(unit: np.ndarray) -> np.ndarray:
            return dicom.stored_from_unit(series, unit, header)

    # window (--dicom-window): the alternative mapping ingest does not use, each image's value
    # window (the set's lowest to highest unit) stretched to [0, 1], measured to show why it does not
    lo, hi = (min(float(np.min(u)) for u in units), max(float(np.max(u)) for u in units)) if window else (0.0, 1.0)

    def code(codec: TileCodec, i: int) -> tuple[int, np.ndarray]:
        stretched = (np.asarray(units[i], np.float32) - lo) / (hi - lo)
        data = _compress(codec, torch.from_numpy(stretched)[None])
        return len(data), integers(codec.decompress(data)[0].numpy() * (hi - lo) + lo)

    return Part(
        f"{description} ({path.name}, mapping {series.mapping}, {series.bits_stored} bits stored)",
        [f"{'crop' if crops else 'frame'}{i}" for i in range(len(units))],
        [integers(u) for u in units],
        {"learned:gray16": code},
        {"learned:gray16": family_rate_points(GRAY16, BACKBONE)},
        lambda a, b: {"psnr": _psnr_int(a, b, peak)},
        "psnr",
        RATES["ct"],
    )


def landsat(count: int) -> Part:
    """Landsat 8 scene 224077, bands 4, 3, 2 (16-bit, evaluation-only): PSNR at 16 bits (peak
    65535); the rgb family codes the three bands together, the gray16 family band by band, the
    classical codecs the three as one image with their colour transform."""
    eval_set = eval_sets.landsat(count, 256)

    def coder(groups: list[list[int]]):
        def code(codec: TileCodec, i: int) -> tuple[int, np.ndarray]:
            image = eval_set.images[i]
            rec, nbytes = torch.zeros_like(image.x), 0
            for g in groups:
                data = _compress(codec, image.x[g])
                rec[g], nbytes = codec.decompress(data), nbytes + len(data)
            values = np.rint(rec.double().numpy().transpose(1, 2, 0) * np.asarray(image.scales))
            return nbytes, np.clip(values, 0, 65535).astype(np.uint16)

        return code

    return Part(
        eval_set.description,
        [i.name for i in eval_set.images],
        [i.stored for i in eval_set.images],
        {"learned:rgb": coder([[0, 1, 2]]), "learned:gray16": coder([[0], [1], [2]])},
        {"learned:rgb": family_rate_points("rgb", BACKBONE), "learned:gray16": family_rate_points(GRAY16, BACKBONE)},
        lambda a, b: {"psnr16": _psnr_int(a, b, 65535)},
        "psnr16",
        RATES["landsat"],
    )


def landsat_bands(count: int) -> Part:
    """The tiles of ``landsat`` band by band, each band its own image: PSNR at 16 bits."""
    eval_set = eval_sets.landsat(count, 256)
    bands = [(image, b) for image in eval_set.images for b in range(image.x.shape[0])]

    def code(codec: TileCodec, i: int) -> tuple[int, np.ndarray]:
        image, b = bands[i]
        data = _compress(codec, image.x[b : b + 1])
        values = np.rint(codec.decompress(data)[0].double().numpy() * image.scales[b])
        return len(data), np.clip(values, 0, 65535).astype(np.uint16)

    return Part(
        f"{eval_set.description}, each band alone",
        [f"{image.name}_band{b + 1}" for image, b in bands],
        [np.ascontiguousarray(image.stored[..., b]) for image, b in bands],
        {"learned:gray16": code},
        {"learned:gray16": family_rate_points(GRAY16, BACKBONE)},
        lambda a, b: {"psnr16": _psnr_int(a, b, 65535)},
        "psnr16",
        RATES["landsat-bands"],
    )


def _point(rows: list[dict], pixels: list[int], nbytes: list[int], label: dict) -> dict:
    """One rate point over the set: the mean of each figure (the curve of means) and each image's own."""
    per_image = {"bpp": [8 * n / p for n, p in zip(nbytes, pixels)]} | {k: [r[k] for r in rows] for k in rows[0]}
    return label | {k: float(np.mean(v)) for k, v in per_image.items()} | {"per_image": per_image}


def measure(part: Part, kept: dict | None = None, keep_labels: tuple[str, ...] = ()) -> dict:
    """Every curve of a part; the classical ones, and the learned ones of ``keep_labels``, copied
    from ``kept`` (an earlier result of the same images) when it is given, since only the other
    learned codecs changed."""
    pixels = [a.shape[0] * a.shape[1] for a in part.stored]
    if kept is not None and kept["images"] != part.names:
        sys.exit(f"base_codec: --learned-only needs an earlier result of the same images ({part.description})")
    reused = {label: kept["curves"][label] for label in keep_labels if kept and label in kept["curves"]}
    curves = _learned_curves(part, pixels, skip=tuple(reused)) | reused
    if kept is not None:
        classical, lossless = {name: kept["curves"][name] for name in CODECS}, kept["lossless"]
    else:
        classical, lossless = _classical_curves(part, pixels), _lossless(part, pixels)
    return {
        "data": part.description,
        "images": part.names,
        "metric": part.metric,
        "curves": curves | classical,
        "lossless": lossless,
    }


def _learned_curves(part: Part, pixels: list[int], skip: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for label, entries in part.families.items():
        if label in skip:
            continue
        for entry in entries:
            codec = TileCodec(load_codec(entry), entry.codec_id, windowed=windowed(WINDOW, entry.card.get("family")))
            coded = [part.learned[label](codec, i) for i in range(len(part.stored))]
            rows = [part.metrics(a, rec) for a, (_, rec) in zip(part.stored, coded)]
            curves.setdefault(label, []).append(_point(rows, pixels, [n for n, _ in coded], {"codec": entry.codec_id}))
            print(f"{label} {entry.codec_id}: {curves[label][-1]['bpp']:.4f} bpp", flush=True)
    return curves


def _classical_curves(part: Part, pixels: list[int]) -> dict[str, list[dict]]:
    """Each classical codec swept per image to the part's target rates."""
    curves: dict[str, list[dict]] = {}
    for name in CODECS:
        swept = [sweep(name, a, part.rates) for a in part.stored]
        for i, target in enumerate(part.rates):
            rows = [part.metrics(a, s[i].decoded) for a, s in zip(part.stored, swept)]
            curves.setdefault(name, []).append(
                _point(
                    rows,
                    pixels,
                    [s[i].nbytes for s in swept],
                    {"target_bpp": target, "levels": [s[i].level for s in swept]},
                )
            )
        print(f"{name}: swept", flush=True)
    return curves


def _lossless(part: Part, pixels: list[int]) -> dict:
    lossless = [lossless_bytes(a) for a in part.stored]
    return {
        name: {
            "bpp_mean": float(np.mean([8 * n[name] / p for n, p in zip(lossless, pixels)])),
            "per_image_bpp": [8 * n[name] / p for n, p in zip(lossless, pixels)],
        }
        for name in lossless[0]
    }


def compare(result: dict, learned: str) -> dict:
    """The learned curve against each classical codec: per-image BD-rates (each image's own two
    curves), their mean and median, and the BD-rate of the mean curves."""
    metric, curves = result["metric"], result["curves"]
    ours = curves[learned]
    out = {}
    for name in CODECS:
        theirs = curves[name]
        summary = per_image_bd_rate(per_image_curves(theirs, metric), per_image_curves(ours, metric))
        out[name] = summary | {"mean_curves_bd_rate_percent": _bd_or_none(theirs, ours, metric)}
    return out


def _bd_or_none(a: list[dict], b: list[dict], metric: str) -> float | None:
    try:
        return bd_rate([p["bpp"] for p in a], [p[metric] for p in a], [p["bpp"] for p in b], [p[metric] for p in b])
    except TTFTError:
        return None


def against_anchors(result: dict, learned: str) -> dict:
    """The mean curve against each published Kodak curve (only their mean curves are published)."""
    anchors = json.loads(ANCHORS.read_text())["curves"]
    return {
        name: {
            "mean_curves_bd_rate_percent": _bd_or_none(a["points"], result["curves"][learned], "psnr"),
            "source": a["source"],
        }
        for name, a in anchors.items()
    }


def at_clinical_ratios(result: dict) -> dict:
    """Each codec's mean figures at the lossy ratios CT archives keep, per slice: the rate is the
    slice's lossless JPEG 2000 size divided by the ratio, the metric read off the codec's own
    curve for that slice (log-rate interpolation); slices whose curve does not reach it are not counted."""
    lossless = result["lossless"]["jpeg2000"]["per_image_bpp"]
    out = {}
    for ratio in CLINICAL_RATIOS:
        row = {"bpp_mean": float(np.mean(lossless) / ratio)}
        for label, points in result["curves"].items():
            values = [
                metric_at_rate(rates, metrics, rate / ratio)
                for (rates, metrics), rate in zip(per_image_curves(points, "psnr_hu"), lossless)
            ]
            counted = [v for v in values if v is not None]
            row[label] = {"psnr_hu_mean": float(np.mean(counted)) if counted else None, "slices_counted": len(counted)}
        out[f"{ratio}:1"] = row
    return out


def plot(result: dict, title: str, path: Path, anchors: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(10, 4.8) if anchors else (7, 4.8))
    for name, points in result["curves"].items():
        points = sorted(points, key=lambda p: p["bpp"])
        ax.plot(
            [p["bpp"] for p in points],
            [p[metric] for p in points],
            "o-" if name.startswith("learned") else ".--",
            label=name,
        )
    shades = plt.cm.Greys(np.linspace(0.35, 0.85, max(len(anchors or {}), 1)))
    for shade, (name, curve) in zip(shades, (anchors or {}).items()):
        points = sorted(curve["points"], key=lambda p: p["bpp"])
        ax.plot(
            [p["bpp"] for p in points],
            [p["psnr"] for p in points],
            ":",
            color=shade,
            lw=1.2,
            label=f"published: {name}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes)")
    ax.set_ylabel(metric.replace("_", " ") + " (dB), mean over images")
    ax.set_title(
        title + ("\npublished curves dotted: benchmarks/anchors/kodak_published.json" if anchors else ""), fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, **({"loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if anchors else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_range(part: dict, label: str) -> dict | None:
    """``part`` with ``label``'s curve cut to its family's default range, under ``label``-default:
    the points a user who names no quality chooses among (opt-in points left out); None where the
    curve has no opt-in point."""
    opt_in = {e.codec_id for e in list_codecs() if e.card.get("opt_in")}
    kept = [p for p in part["curves"][label] if p.get("codec") not in opt_in]
    if len(kept) == len(part["curves"][label]):
        return None
    return {**part, "curves": {**part["curves"], label + "-default": kept}}


def summarise(result: dict) -> None:
    """The comparisons that follow from the stored curves, drawn again over all of them (a family
    with no codecs of the chosen backbone has no curve to compare)."""
    for part, labels in {
        "kodak": ("learned:rgb", "learned:rgb-tic"),
        "ct": ("learned:gray16",),
        "landsat": ("learned:rgb", "learned:gray16"),
        "landsat-bands": ("learned:gray16",),
        "gray8": ("learned:gray16",),
        **dict.fromkeys(DICOM_IMAGES, ("learned:gray16",)),
    }.items():
        if part in result:
            curves = result[part]["curves"]
            result[part]["vs_classical"] = {label: compare(result[part], label) for label in labels if label in curves}
            for label in labels:
                cut = default_range(result[part], label) if label in curves else None
                if cut is not None:
                    result[part]["vs_classical"][label + "-default"] = compare(cut, label + "-default")
    if "kodak" in result and "learned:rgb" in result["kodak"]["curves"]:
        result["kodak"]["vs_published"] = {label: against_anchors(result["kodak"], label) for label in ("learned:rgb",)}
    if "ct" in result and "learned:gray16" in result["ct"]["curves"]:
        result["ct"]["at_clinical_ratios"] = at_clinical_ratios(result["ct"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=int, default=24, help="how many Kodak images")
    parser.add_argument("--ct-every", type=int, default=1, help="use every K-th CT slice")
    parser.add_argument("--landsat", type=int, default=4, help="how many 256x256 tiles of Landsat 224077")
    parser.add_argument("--out", default=str(RESULTS / "base_codec.json"))
    parser.add_argument("--write-cards", action="store_true", help="record each codec's figures in its card")
    parser.add_argument(
        "--dicom-window",
        action="store_true",
        help="code the DICOM parts by each image's value window instead of the archive's mapping (write to another --out)",
    )
    parser.add_argument(
        "--window",
        choices=("tile", "item"),
        default=None,
        help="code every image in its own value window (tile) or in its mapping (item); default: each family's archive default",
    )
    parser.add_argument(
        "--backbone", default="hyperprior", help="the backbone of the rgb and gray16 curves (hyperprior, checkerboard)"
    )
    parser.add_argument(
        "--gray16-family",
        default="gray16",
        help="the one-channel family the learned:gray16 curves measure (gray16med: DICOM series other than CT)",
    )
    parser.add_argument(
        "--learned-only",
        action="store_true",
        help="keep the classical curves of --out's parts (same images) and measure the learned ones again",
    )
    parser.add_argument(
        "--parts", default="kodak,ct,landsat,gray8", help="which parts to measure again; the others are kept from --out"
    )
    parser.add_argument(
        "--keep",
        default="",
        help="with --learned-only: learned curves kept as measured, not measured again (learned:rgb-tic,...)",
    )
    parser.add_argument(
        "--kept-from",
        default=None,
        help="with --learned-only: the earlier result whose curves are kept (default: --out)",
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"base_codec: the shared data set is not at {SHARED}")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    global BACKBONE, WINDOW, GRAY16
    BACKBONE, WINDOW, GRAY16 = args.backbone, args.window, args.gray16_family
    parts = {
        "kodak": lambda: kodak(args.kodak),
        "ct": lambda: ct(args.ct_every),
        "landsat": lambda: landsat(args.landsat),
        "landsat-bands": lambda: landsat_bands(args.landsat),
        "gray8": lambda: gray8(args.kodak),
        **{name: (lambda name=name: dicom_part(name, args.dicom_window)) for name in DICOM_IMAGES},
    }
    keep_labels = tuple(filter(None, args.keep.split(",")))
    earlier = json.loads(Path(args.kept_from).read_text()) if args.kept_from else result
    for name in args.parts.split(","):
        if name not in parts:
            sys.exit(f"base_codec: unknown part {name!r}; known: {', '.join(parts)}")
        kept = None
        if args.learned_only:
            kept = earlier.get(name)
            if kept is None:
                sys.exit(f"base_codec: --learned-only needs an earlier result of part {name!r}")
        result[name] = measure(parts[name](), kept, keep_labels)
        summarise(result)
        write(out, result)  # after each part: a long run stopped early keeps what it measured
    summarise(result)
    write(out, result)
    anchors = json.loads(ANCHORS.read_text())["curves"]
    for name in result:
        plot(
            result[name],
            result[name]["data"],
            out.with_name(f"{out.stem}_{name}.png"),
            anchors if name == "kodak" else None,
        )
    print(
        json.dumps(
            {
                name: {
                    label: {
                        codec: round(v["per_image_bd_rate_mean"], 1)
                        if v["per_image_bd_rate_mean"] is not None
                        else None
                        for codec, v in vs.items()
                    }
                    for label, vs in part["vs_classical"].items()
                }
                for name, part in result.items()
            },
            indent=2,
        )
    )
    if args.write_cards:
        write_cards(result, args.parts.split(","), " ".join([COMMAND, *sys.argv[1:]]), set(keep_labels))


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def write_cards(result: dict, measured: list[str], command: str, kept_labels: set[str]) -> None:
    """Each codec measured by this run: its own point (means over the set) and its distance to JPEG
    2000's same-rate curve at its rate, in its card."""
    by_id = {e.codec_id: e for e in list_codecs()}
    for part, learned in (("kodak", "learned:rgb"), ("kodak", "learned:rgb-tic"), ("ct", "learned:gray16")):
        if part not in measured or learned in kept_labels:
            continue
        metric = result[part]["metric"]
        j2k = result[part]["curves"]["jpeg2000"]
        for point in result[part]["curves"].get(learned, []):
            entry = by_id[point["codec"]]
            card = json.loads(entry.weights.with_suffix(".json").read_text())
            gap = gap_at_equal_rate(j2k, point, metric)
            card["evaluation"] = {
                "data": result[part]["data"],
                "command": command,
                "convention": "docs/evaluation.md: classical codecs swept per image to target rates",
                **{k: round(v, 4) for k, v in point.items() if k not in ("codec", "per_image")},
                f"{metric}_gap_to_jpeg2000_at_equal_rate_db": None if gap is None else round(gap, 2),
                "family_per_image_bd_rate_vs_jpeg2000_percent": round(
                    result[part]["vs_classical"][learned]["jpeg2000"]["per_image_bd_rate_mean"], 1
                ),
            }
            entry.weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
