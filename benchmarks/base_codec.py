"""Rate-distortion of the shipped base codecs against JPEG 2000, HTJ2K and JPEG XL, from real bytes.

- rgb family on the 24 Kodak images: bpp, PSNR and MS-SSIM (means over images per setting), each
  shipped backbone its own curve (learned:rgb the hyperprior, learned:rgb-tic the TIC).
- gray16 family on every slice of ct_lung_A0002 (evaluation-only): PSNR over the HU range
  [-1024, 3071] (peak 4095) and inside the lung (W1400/L-700) and mediastinum (W350/L40) windows.
  Learned reconstructions are rounded to integer HU, as a DICOM writer stores them.

- gray16 family on 8-bit content (``--parts gray8``): the luma of the Kodak images, PSNR at 8 bits.

Writes benchmarks/results/base_codec.json and base_codec_{kodak,ct,landsat,gray8}.png. With four or more rate
points a BD-rate against JPEG 2000 is given; with fewer, the PSNR gap to JPEG 2000 at the same
rate (JPEG 2000's curve interpolated in log-rate).

    .venv/bin/python benchmarks/base_codec.py [--kodak N] [--ct-every K] [--parts ct,landsat,gray8]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from adapters import eval_sets  # noqa: E402
from adapters.classical import LEVELS  # noqa: E402
from adapters.classical import roundtrip as classical_roundtrip  # noqa: E402
from adapters.dicom import read_hu  # noqa: E402
from adapters.image_files import read_luma_u8, read_rgb_u8  # noqa: E402
from adapters.normalise import HU_MAX, HU_MIN, from_hu, to_hu  # noqa: E402
from adapters.zoo import family_rate_points, load_codec  # noqa: E402
from ttft_core import TileCodec, TTFTError  # noqa: E402
from ttft_core.metrics import bd_rate, gap_at_equal_rate, ms_ssim, psnr  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CLASSICAL_LEVELS = {"rgb": LEVELS["kodak"], "ct": LEVELS["ct"]}
WINDOWS = {"lung": (1400, -700), "mediastinum": (350, 40)}
KODAK_LEARNED = {"hyperprior": "learned:rgb", "tic": "learned:rgb-tic"}  # backbone -> curve


def windowed_psnr(hu_a: np.ndarray, hu_b: np.ndarray, width: float, level: float) -> float:
    lo = level - width / 2
    a = np.clip((hu_a - lo) / width, 0, 1)
    b = np.clip((hu_b - lo) / width, 0, 1)
    return psnr(torch.from_numpy(a), torch.from_numpy(b))


def mean_point(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def kodak(n_images: int) -> dict:
    images = sorted((SHARED / "natural").glob("kodim*.png"))[:n_images]
    arrays = [read_rgb_u8(p).permute(1, 2, 0).numpy() for p in images]
    learned = {label: family_rate_points("rgb", backbone) for backbone, label in KODAK_LEARNED.items()}
    curves = eight_bit_curves("kodak", arrays, learned, with_ms_ssim=True)
    return {"data": f"{len(images)} Kodak images (natural/)", "curves": curves}


def gray8(n_images: int) -> dict:
    """The gray16 family on 8-bit content, where its rate points are read as bits per 8-bit pixel:
    the luma of the Kodak images (BT.601, rounded to 8 bits), PSNR at 8 bits, against the
    classical codecs on the same luma."""
    images = sorted((SHARED / "natural").glob("kodim*.png"))[:n_images]
    lumas = [read_luma_u8(p) for p in images]
    curves = eight_bit_curves("gray8", lumas, {"learned:gray16": family_rate_points("gray16")}, with_ms_ssim=False)
    return {"data": f"luma of {len(images)} Kodak images (natural/), 8 bits", "curves": curves}


def eight_bit_curves(part: str, arrays: list[np.ndarray], learned: dict[str, list], with_ms_ssim: bool) -> dict:
    """Curves of 8-bit images (H, W, C) or (H, W): each learned label's codecs, then the classical
    codecs at their Kodak levels; learned reconstructions rounded to 8 bits, as a file stores them."""

    def unit(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.float32)) / 255
        return t.permute(2, 0, 1) if t.dim() == 3 else t[None]

    def row(x: torch.Tensor, y: torch.Tensor, n_bytes: int) -> dict:
        r = {"bpp": 8 * n_bytes / x[0].numel(), "psnr": psnr(x, y)}
        return {**r, "ms_ssim": ms_ssim(x, y)} if with_ms_ssim else r

    curves: dict[str, list[dict]] = {}
    for label, entries in learned.items():
        for entry in entries:
            codec = TileCodec(load_codec(entry), entry.codec_id)
            rows = []
            for a in arrays:
                x = unit(a)
                data = codec.compress(x)
                rows.append(row(x, (codec.decompress(data) * 255).round() / 255, len(data)))
            curves.setdefault(label, []).append({"codec": entry.codec_id, **mean_point(rows)})
            print(f"{part} {entry.codec_id}: {curves[label][-1]}", flush=True)
    for name, levels in CLASSICAL_LEVELS["rgb"].items():
        for level in levels:
            rows = []
            for a in arrays:
                n, d = classical_roundtrip(name, a, level)
                rows.append(row(unit(a), unit(d), n))
            curves.setdefault(name, []).append({"level": level, **mean_point(rows)})
        print(f"{part} {name}: done", flush=True)
    return curves


def ct(every: int) -> dict:
    files = sorted((SHARED / "medical" / "ct_lung_A0002").glob("*.dcm"))[::every]
    slices = [np.clip(read_hu(f), HU_MIN, HU_MAX) for f in files]

    def metrics(hu: np.ndarray, rec: np.ndarray, n_bytes: int) -> dict:
        row = {"bpp": 8 * n_bytes / hu.size, "psnr_hu": psnr(torch.from_numpy(hu), torch.from_numpy(rec), peak=HU_MAX - HU_MIN)}
        for name, (w, l) in WINDOWS.items():
            row[f"psnr_{name}"] = windowed_psnr(hu, rec, w, l)
        return row

    curves: dict[str, list[dict]] = {}
    for entry in family_rate_points("gray16"):
        codec = TileCodec(load_codec(entry), entry.codec_id)
        rows = []
        for hu in slices:
            data = codec.compress(from_hu(hu)[None])
            rec = np.rint(to_hu(codec.decompress(data)[0]))
            rows.append(metrics(hu, rec, len(data)))
        curves.setdefault("learned:gray16", []).append({"codec": entry.codec_id, **mean_point(rows)})
        print(f"ct {entry.codec_id}: {curves['learned:gray16'][-1]}", flush=True)
    for name, levels in CLASSICAL_LEVELS["ct"].items():
        for level in levels:
            rows = []
            for hu in slices:
                stored = (hu - HU_MIN).astype(np.uint16)
                n, d = classical_roundtrip(name, stored, level)
                rows.append(metrics(hu, np.clip(d.astype(np.float64), 0, 4095) + HU_MIN, n))
            curves.setdefault(name, []).append({"level": level, **mean_point(rows)})
        print(f"ct {name}: done", flush=True)
    return {"data": f"{len(files)} slices of ct_lung_A0002 (every {every})", "curves": curves}


def landsat(count: int) -> dict:
    """Landsat 8 scene 224077, bands 4, 3, 2 (16-bit, evaluation-only): PSNR at 16 bits (peak
    65535) of the uint16 reconstruction, for the rgb family on the three bands together and the
    gray16 family band by band; the classical codecs code the three bands as one image."""
    eval_set = eval_sets.landsat(count, 256)

    def psnr16(stored: np.ndarray, rec: np.ndarray) -> float:
        mse = np.mean((stored.astype(np.float64) - rec.astype(np.float64)) ** 2)
        return float(10 * np.log10(65535.0**2 / max(mse, 1e-12)))

    curves: dict[str, list[dict]] = {}
    for family in ("rgb", "gray16"):
        for entry in family_rate_points(family):
            codec = TileCodec(load_codec(entry), entry.codec_id)
            rows = []
            for image in eval_set.images:
                groups = [[0, 1, 2]] if family == "rgb" else [[0], [1], [2]]
                rec, nbytes = torch.zeros_like(image.x), 0
                for g in groups:
                    data = codec.compress(image.x[g])
                    rec[g], nbytes = codec.decompress(data), nbytes + len(data)
                stored = np.clip(np.rint(rec.double().numpy().transpose(1, 2, 0) * np.asarray(image.scales)), 0, 65535)
                rows.append({"bpp": 8 * nbytes / image.x[0].numel(), "psnr16": psnr16(image.stored, stored)})
            curves.setdefault(f"learned:{family}", []).append({"codec": entry.codec_id, **mean_point(rows)})
            print(f"landsat {entry.codec_id}: {curves[f'learned:{family}'][-1]}", flush=True)
    for name, levels in LEVELS["landsat"].items():
        for level in levels:
            rows = []
            for image in eval_set.images:
                n, d = classical_roundtrip(name, image.stored, level)
                rows.append({"bpp": 8 * n / image.x[0].numel(), "psnr16": psnr16(image.stored, d)})
            curves.setdefault(name, []).append({"level": level, **mean_point(rows)})
        print(f"landsat {name}: done", flush=True)
    return {"data": eval_set.description, "curves": curves}


def compare(curves: dict, learned: str, metric: str) -> dict:
    """BD-rate vs each classical codec; where the points are few or the quality ranges do not
    overlap, the metric gap at equal rate for each learned point inside the classical rate range."""
    ours = sorted(curves.get(learned, []), key=lambda p: p["bpp"])
    out = {}
    for name, points in curves.items():
        if name == learned or not ours:
            continue
        points = sorted(points, key=lambda p: p["bpp"])
        why = "fewer than 4 learned rate points"
        if len(ours) >= 4:
            try:
                out[name] = {"bd_rate_percent": bd_rate([p["bpp"] for p in points], [p[metric] for p in points],
                                                        [p["bpp"] for p in ours], [p[metric] for p in ours])}  # fmt: skip
                continue
            except TTFTError as exc:
                why = str(exc)
        out[name] = {"bd_rate_percent": None, "why": why, "at_equal_rate": _gaps(ours, points, metric)}
    return out


def _gaps(ours: list[dict], points: list[dict], metric: str) -> list[dict]:
    """The learned metric minus the classical one at the same rate, where the classical codec was measured."""
    gaps = [(p["bpp"], gap_at_equal_rate(points, p, metric)) for p in ours]
    return [{"bpp": rate, f"{metric}_gain_db": gap} for rate, gap in gaps if gap is not None]


def _without(curves: dict, name: str) -> dict:
    return {k: v for k, v in curves.items() if k != name}


def plot(curves: dict, metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, points in curves.items():
        points = sorted(points, key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in points], [p[metric] for p in points], "o-" if name.startswith("learned") else ".--", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes)")
    ax.set_ylabel(metric.replace("_", " ") + " (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=int, default=24, help="how many Kodak images")
    parser.add_argument("--ct-every", type=int, default=1, help="use every K-th CT slice")
    parser.add_argument("--landsat", type=int, default=4, help="how many 256x256 tiles of Landsat 224077")
    parser.add_argument("--out", default=str(RESULTS / "base_codec.json"))
    parser.add_argument("--write-cards", action="store_true", help="record each codec's figures in its card")
    parser.add_argument("--parts", default="kodak,ct,landsat",
                        help="which parts to measure again; the others are kept from --out")  # fmt: skip
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"base_codec: the shared data set is not at {SHARED}")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    measure = {"kodak": lambda: kodak(args.kodak), "ct": lambda: ct(args.ct_every), "landsat": lambda: landsat(args.landsat),
               "gray8": lambda: gray8(args.kodak)}  # fmt: skip
    for part in args.parts.split(","):
        if part not in measure:
            sys.exit(f"base_codec: unknown part {part!r}; known: {', '.join(measure)}")
        result[part] = measure[part]()
    kodak_curves = result["kodak"]["curves"]
    result["kodak"]["vs_classical_psnr"] = compare(_without(kodak_curves, "learned:rgb-tic"), "learned:rgb", "psnr")
    if "learned:rgb-tic" in kodak_curves:
        result["kodak"]["tic_vs_classical_psnr"] = compare(_without(kodak_curves, "learned:rgb"), "learned:rgb-tic", "psnr")
    result["ct"]["vs_classical_psnr_hu"] = compare(result["ct"]["curves"], "learned:gray16", "psnr_hu")
    if "gray8" in result:
        result["gray8"]["vs_classical_psnr"] = compare(result["gray8"]["curves"], "learned:gray16", "psnr")
        plot(result["gray8"]["curves"], "psnr", result["gray8"]["data"], out.parent / "base_codec_gray8.png")
    result["landsat"]["vs_classical_psnr16"] = {
        family: compare({k: v for k, v in result["landsat"]["curves"].items() if k == f"learned:{family}"
                         or not k.startswith("learned")}, f"learned:{family}", "psnr16")
        for family in ("rgb", "gray16")
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result["kodak"]["curves"], "psnr", result["kodak"]["data"], out.parent / "base_codec_kodak.png")
    plot(result["ct"]["curves"], "psnr_hu", result["ct"]["data"], out.parent / "base_codec_ct.png")
    plot(result["landsat"]["curves"], "psnr16", result["landsat"]["data"], out.parent / "base_codec_landsat.png")
    print(json.dumps({"kodak": result["kodak"]["vs_classical_psnr"], "kodak_tic": result["kodak"].get("tic_vs_classical_psnr"),
                      "ct": result["ct"]["vs_classical_psnr_hu"], "gray8": result.get("gray8", {}).get("vs_classical_psnr"),
                      "landsat": result["landsat"]["vs_classical_psnr16"]}, indent=2))  # fmt: skip
    if args.write_cards:
        write_cards(result)


def _gap_to_jpeg2000(point: dict, j2k: list[dict], metric: str) -> dict:
    """The point's distance to JPEG 2000's curve at its own rate; outside the rates JPEG 2000 was
    measured at there is no curve to compare with, and the card says so."""
    gap = gap_at_equal_rate(j2k, point, metric)
    if gap is None:
        rates = sorted(q["bpp"] for q in j2k)
        return {f"{metric}_gap_to_jpeg2000_at_equal_rate_db": None,
                "gap_note": f"outside the rates JPEG 2000 was measured at ({rates[0]:.3f}-{rates[-1]:.3f} bpp)"}  # fmt: skip
    return {f"{metric}_gap_to_jpeg2000_at_equal_rate_db": round(gap, 2)}


def write_cards(result: dict) -> None:
    """Each shipped codec's own point, and its distance to JPEG 2000 at the same rate, in its card."""
    from adapters.zoo import list_codecs

    by_id = {e.codec_id: e for e in list_codecs()}
    parts = (("kodak", "learned:rgb", "psnr"), ("kodak", "learned:rgb-tic", "psnr"), ("ct", "learned:gray16", "psnr_hu"))
    for part, learned, metric in parts:
        j2k = result[part]["curves"]["jpeg2000"]
        for point in result[part]["curves"].get(learned, []):
            entry = by_id[point["codec"]]
            card = json.loads(entry.weights.with_suffix(".json").read_text())
            card["evaluation"] = {
                "data": result[part]["data"], "command": ".venv/bin/python benchmarks/base_codec.py --write-cards",
                **{k: round(v, 4) for k, v in point.items() if k != "codec"},
                **_gap_to_jpeg2000(point, j2k, metric),
            }  # fmt: skip
            entry.weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
