"""The Markdown tables of docs/evaluation.md, printed from the result files in benchmarks/results/
so that every figure there comes from a file and a command.

    .venv/bin/python benchmarks/tables.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttft_archive.flows.evaluation.evaluate import compare  # noqa: E402
from ttft_archive.ttft_core.metrics import metric_at_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLASSICAL = ("jpeg2000", "htj2k", "jpegxl")
NAMES = {"jpeg2000": "JPEG 2000", "htj2k": "HTJ2K", "jpegxl": "JPEG XL"}
# (file stem, preset name) of the task curves
TASK_FILES = {
    "refine": ["tasks_refine_rgb", "tasks_refine_ct", "tasks_refine_multispectral"],
    "paper": [
        "tasks_rgb",
        "tasks_ct_lung",
        "tasks_ct_mediastinum",
        "tasks_ct_bone",
        "tasks_ct_lungmask",
        "tasks_multispectral",
    ],
}
TASK_PAIRS = (
    ("ttft-closed", "stage1"),
    ("ttft-open", "base"),
    ("stage1", "base"),
    ("base", "jpeg2000"),
    ("ttft-closed", "jpeg2000"),
    ("ttft-open", "jpeg2000"),
    ("ttft-closed", "htj2k"),
    ("ttft-open", "htj2k"),
    ("ttft-closed", "jpegxl"),
    ("ttft-open", "jpegxl"),
)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def base_codecs(result: dict) -> None:
    print(
        "| set | learned family | against | per-image BD-rate: mean (median) | images where we need more bits "
        "| BD-rate of the mean curves |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for part, data in result.items():
        for label, versus in data["vs_classical"].items():
            for codec in CLASSICAL:
                v = versus[codec]
                worse = sum(1 for x in v["per_image_bd_rate_percent"] if x is not None and x > 0)
                print(
                    f"| {part} | {label.split(':')[1]} | {NAMES[codec]} | **{pct(v['per_image_bd_rate_mean'])}** "
                    f"({pct(v['per_image_bd_rate_median'])}) | {worse} of {v['images_counted']} "
                    f"| {pct(v['mean_curves_bd_rate_percent'])} |"
                )


def _default_range(versus: dict, label: str) -> dict:
    """A family's comparisons over its default range where it has opt-in points, else over all."""
    return versus.get(label + "-default", versus[label])


def checkerboard_family(base: dict, grown: dict) -> None:
    """Each family as hyperprior and as checkerboard points, per-image BD-rate means."""
    print("| set | family | against | hyperprior | checkerboard |")
    print("| --- | --- | --- | --- | --- |")
    for part, data in grown.items():
        for label in ("learned:rgb", "learned:gray16"):
            if label not in data["vs_classical"]:
                continue
            # like with like: each family over its default range (the opt-in points differ)
            before, versus = (_default_range(d[part]["vs_classical"], label) for d in (base, grown))
            for codec in CLASSICAL:
                print(
                    f"| {part} | {label.split(':')[1]} | {NAMES[codec]} | {pct(before[codec]['per_image_bd_rate_mean'])} "
                    f"| **{pct(versus[codec]['per_image_bd_rate_mean'])}** |"
                )


def context_gain(result: dict) -> None:
    print(
        "| point | set | context steps | rate saved (per-image median) | PSNR change | "
        "encode / decode s, hyperprior -> checkerboard |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in result["rows"]:
        h, c = row["hyperprior"], row["checkerboard"]
        print(
            f"| {c['codec']} | {row['data'].split(' (')[0]} | {row['card']['steps']:,} "
            f"| **{row['rate_saved_percent']:.2f}%** ({row['rate_saved_percent_per_image_median']:.2f}%) "
            f"| {row['metric_change_db']:+.3f} dB "
            f"| {h['encode_seconds']} / {h['decode_seconds']} -> {c['encode_seconds']} / {c['decode_seconds']} |"
        )


# (hyperprior result files, checkerboard result files, curves compared) of each family's tasks,
# all tuned with the default preset
CHECKERBOARD_TASKS = {
    "gray16": (
        ["tasks_refine_ct"],
        ["tasks_checkerboard_ct", "tasks_checkerboard_refine_ct"],
        ("base", "stage1", "ttft-closed", "ttft-open"),
    ),
    "rgb": (["tasks_refine_rgb"], ["tasks_checkerboard_refine_rgb"], ("base", "stage1", "ttft-closed", "ttft-open")),
}


def checkerboard_tasks(results: Path, family: str) -> None:
    """A family's task curves on the checkerboard points against the hyperprior points' (BD-rate
    of the mean curves): the bare codec, the stage-1 adapters, and TTFT with the default preset
    where it was measured."""
    plain_stems, grown_stems, curves = CHECKERBOARD_TASKS[family]
    hyperprior = {k: v for stem in plain_stems for k, v in _task_results(results / f"{stem}.json").items()}
    grown = {k: v for stem in grown_stems for k, v in _task_results(results / f"{stem}.json").items()}
    print("| task | " + " | ".join(f"{c}, checkerboard against hyperprior" for c in curves) + " |")
    print("| --- |" + " --- |" * len(curves))
    for key, result in grown.items():
        row = [pct(_grown_against_plain(hyperprior[key], result, curve)) for curve in curves]
        print(f"| {key} | " + " | ".join(row) + " |")


def _grown_against_plain(plain: dict, grown: dict, curve: str) -> float | None:
    """BD-rate of the mean curves of one variant, checkerboard against hyperprior, taken as the
    task result's own tables take theirs (the task's metric direction); None where either is absent."""
    a, b = plain["curves"].get(curve), grown["curves"].get(curve)
    if not (a and b):
        return None
    pair = (("checkerboard", "hyperprior"),)
    [row] = compare(
        {"hyperprior": a, "checkerboard": b}, grown["higher_is_better"], grown.get("pooled", False), pairs=pair
    )
    return row["bd_rate_percent"]


def learned_points(result: dict) -> None:
    print("| set | codec | bpp | metric (dB) | JPEG 2000 at that rate (dB) |")
    print("| --- | --- | --- | --- | --- |")
    for part, data in result.items():
        metric = data["metric"]
        j2k = data["curves"]["jpeg2000"]
        for label, points in data["curves"].items():
            if not label.startswith("learned"):
                continue
            for p in points:
                theirs = metric_at_rate([q["bpp"] for q in j2k], [q[metric] for q in j2k], p["bpp"])
                shown = "-" if theirs is None else f"{theirs:.2f}"
                print(f"| {part} | {p['codec']} | {p['bpp']:.3f} | {metric} {p[metric]:.2f} | {shown} |")


def anchors(result: dict) -> None:
    print("| published curve (Kodak) | BD-rate of our rgb mean curve against it |")
    print("| --- | --- |")
    for name, v in result["kodak"]["vs_published"]["learned:rgb"].items():
        print(f"| {name} | {pct(v['mean_curves_bd_rate_percent'])} |")


def lossless(result: dict) -> None:
    print("| set | JPEG 2000 | HTJ2K | JPEG-LS | JPEG XL | learned family's rates |")
    print("| --- | --- | --- | --- | --- | --- |")
    for part, data in result.items():
        sizes = data["lossless"]
        cells = " | ".join(f"{sizes[c]['bpp_mean']:.2f}" for c in ("jpeg2000", "htj2k", "jpegls", "jpegxl"))
        spans = []
        for label, points in data["curves"].items():
            if label.startswith("learned"):
                lo, hi = min(p["bpp"] for p in points), max(p["bpp"] for p in points)
                ref = sizes["jpeg2000"]["bpp_mean"]
                spans.append(f"{label.split(':')[1]} {lo:.3f}-{hi:.3f} bpp ({ref / hi:.0f}:1 to {ref / lo:.0f}:1)")
        print(f"| {part} | {cells} | {'; '.join(spans)} |")


def clinical(result: dict) -> None:
    ratios = result["ct"]["at_clinical_ratios"]
    labels = [k for k in next(iter(ratios.values())) if k != "bpp_mean"]
    print("| ratio to lossless JPEG 2000 | mean bpp | " + " | ".join(labels) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in labels) + " |")
    for ratio, row in ratios.items():
        cells = []
        for label in labels:
            v = row[label]
            cells.append("-" if v["psnr_hu_mean"] is None else f"{v['psnr_hu_mean']:.2f} ({v['slices_counted']})")
        print(f"| {ratio} | {row['bpp_mean']:.3f} | " + " | ".join(cells) + " |")


def tasks(results: Path) -> None:
    for preset, stems in TASK_FILES.items():
        print(f"\n*{preset}*\n")
        print(
            "| task on data | curve | against | per-image BD-rate mean (median) | BD-rate of the mean curves | BD-metric |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for stem in stems:
            path = results / f"{stem}.json"
            if not path.exists():
                continue
            for key, r in json.loads(path.read_text())["results"].items():
                rows = {(row["curve"], row["against"]): row for row in r["table"]}
                for pair in TASK_PAIRS:
                    row = rows.get(pair)
                    if row is None:
                        continue
                    per_image = (
                        "pooled"
                        if r.get("pooled")
                        else (
                            f"**{pct(row.get('per_image_bd_rate_mean'))}** ({pct(row.get('per_image_bd_rate_median'))})"
                        )
                    )
                    metric = "-" if row["bd_metric"] is None else f"{row['bd_metric']:+.3f}"
                    mean_curves = pct(row["bd_rate_percent"])
                    if r.get("pooled"):
                        mean_curves = f"**{mean_curves}**"
                    print(f"| {key} ({r['metric']}) | {pair[0]} | {pair[1]} | {per_image} | {mean_curves} | {metric} |")


# latent refinement schedules side by side (docs/evaluation.md): (column, file stems), and the
# (task/data, curve, against) rows each schedule's run measured again
LATENT_SCHEDULES = (
    ("40 + 40 ste (default)", ["tasks_refine_rgb", "tasks_refine_ct"]),
    ("40 + 40 sga", ["tasks_sga40_rgb", "tasks_sga40_ct"]),
    ("40 + 200 ste", ["tasks_ste200_rgb", "tasks_ste200_ct"]),
    ("40 + 200 sga (thorough)", ["tasks_thorough_rgb", "tasks_thorough_ct"]),
)
LATENT_ROWS = (
    ("pixel/kodak", "ttft-open", "base"),
    ("pixel/kodak", "ttft-open", "jpeg2000"),
    ("edges/landsat", "ttft-closed", "stage1"),
    ("edges/landsat", "ttft-closed", "jpeg2000"),
    ("pixel/landsat", "ttft-open", "base"),
    ("pixel/landsat", "ttft-open", "jpeg2000"),
    ("pixel/ct", "ttft-open", "base"),
    ("pixel/ct", "ttft-open", "jpeg2000"),
    ("ct-lung-window/ct", "ttft-closed", "stage1"),
    ("ct-lung-window/ct", "ttft-closed", "jpeg2000"),
)


@functools.cache
def _task_results(path: Path) -> dict:
    """A task result file's results by task/data, read once; empty where the file is absent."""
    return json.loads(path.read_text())["results"] if path.exists() else {}


def _remeasured(results: Path, stems: list[str], key: str, curve: str) -> dict | None:
    """The task result of ``key`` in the first of ``stems`` whose run measured ``curve`` itself
    (a file made by --variants keeps the curves it was copied with, and says which it measured)."""
    for stem in stems:
        r = _task_results(results / f"{stem}.json").get(key)
        if r:
            if "refine" in stem or f"then {curve}" in r.get("run_by", ""):
                return r
    return None


# the default and thorough schedules on the Landsat tiles' pixels for both rgb backbones, and on
# CT pixels over the whole gray16 family (the opt-in q5 and q6 too): (title, columns, rows)
WIDER_SCHEDULES = (
    (
        "on the Landsat pixels, both rgb backbones",
        (
            ("hyperprior, 40 + 40 ste (default)", ["tasks_refine_rgb"]),
            ("hyperprior, thorough", ["tasks_thorough_rgb"]),
            ("checkerboard, 40 + 40 ste (default)", ["tasks_checkerboard_refine_rgb"]),
            ("checkerboard, thorough", ["tasks_checkerboard_thorough_rgb"]),
        ),
        tuple(
            ("pixel/landsat", *pair)
            for pair in (("base", "jpeg2000"), ("ttft-open", "base"), ("ttft-open", "jpeg2000"))
        ),
    ),
    (
        "on the CT pixels over q00 to q6",
        (
            ("40 + 40 ste (default)", ["tasks_refine_ct_opt_in"]),
            ("40 + 200 sga (thorough)", ["tasks_thorough_ct_opt_in"]),
        ),
        tuple(("pixel/ct", *pair) for pair in (("base", "jpeg2000"), ("ttft-open", "base"), ("ttft-open", "jpeg2000"))),
    ),
)


def latent_refinement(results: Path) -> None:
    schedule_table(results, LATENT_SCHEDULES, LATENT_ROWS)
    timing = results / "latent_schedules.json"
    if timing.exists():
        timed = json.loads(timing.read_text())["rows"]
        seconds = {(r["schedule"], r["data"]): f"{r['seconds']:.1f} s" for r in timed}
        for data, codec in sorted({(r["data"], r["codec"]) for r in timed}):
            cells = [seconds.get((name, data), "-") for name, _ in LATENT_SCHEDULES]
            print(f"| seconds a 256x256 tile | {data}, {codec} | one thread | " + " | ".join(cells) + " |")


def schedule_table(results: Path, schedules: tuple, rows: tuple) -> None:
    """One column per schedule (its result files), one row per (task/data, curve, against); a
    cell is the per-image BD-rate mean where that schedule's run measured the curve."""
    print("| task on data | curve | against | " + " | ".join(name for name, _ in schedules) + " |")
    print("| --- | --- | --- |" + " --- |" * len(schedules))
    for key, curve, against in rows:
        cells = []
        for _, stems in schedules:
            r = _remeasured(results, stems, key, curve)
            row = next((t for t in r["table"] if (t["curve"], t["against"]) == (curve, against)), None) if r else None
            cells.append("-" if row is None else pct(row.get("per_image_bd_rate_mean")))
        print(f"| {key} | {curve} | {against} | " + " | ".join(cells) + " |")


# whole images through a real ingest and query, with and without tuning (benchmarks/raster_ttft.py,
# benchmarks/dicom_ttft.py): result stems and what each holds
ARCHIVE_TUNING = (
    ("raster_ttft_landsat", "four Landsat tiles (B4-B3-B2, 16 bits), the rgb checkerboard points"),
    ("raster_ttft_landsat_hyperprior", "four Landsat tiles (B4-B3-B2, 16 bits), the rgb hyperprior points"),
    (
        "raster_ttft_landsat1024_tile512_hyperprior",
        "two 1024x1024 Landsat windows in tiles of 512, the rgb hyperprior points",
    ),
    (
        "raster_ttft_landsat1024_tile512_hyperprior_thorough",
        "two 1024x1024 Landsat windows in tiles of 512, four rgb hyperprior points, thorough",
    ),
    ("dicom_ttft_ct_slice", "slice 1-15 of ct_lung_A0002 in 4 tiles of 256, the gray16 hyperprior points"),
    ("dicom_ttft_ct_slice_tile512", "slice 1-15 of ct_lung_A0002 as 1 tile of 512, the gray16 hyperprior points"),
)
PRESET_NAMES = {"none": "no tuning", "default": "default (40 + 40)", "ct": "default (40 + 40)"}


def archive_tuning(result: dict) -> None:
    """Each codec's mean rate and PSNR over the images under each preset, the presets' BD-rates
    against JPEG 2000 (mean of the per-image ones) and seconds per 256x256 tile."""
    rows = [r | {"preset": r.get("curve", r["preset"])} for r in result["rows"]]  # a value window's own curve
    figure = next(k for k in rows[0] if k.startswith("psnr_"))
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    print("| codec | " + " | ".join(PRESET_NAMES.get(p, p) for p in presets) + " |")
    print("| --- |" + " --- |" * len(presets))
    for codec in dict.fromkeys(r["codec"] for r in rows):
        cells = []
        for preset in presets:
            chosen = [r for r in rows if (r["codec"], r["preset"]) == (codec, preset)]
            bpp, db = (sum(r[k] for r in chosen) / len(chosen) for k in ("bpp", figure))
            cells.append(f"{bpp:.4f} bpp, {db:.2f} dB")
        print(f"| {codec} | " + " | ".join(cells) + " |")
    bd = result["bd_rate_vs_jpeg2000_percent"]
    bd = bd.get("mean", bd)
    print("| against JPEG 2000 | " + " | ".join(f"**{pct(bd[p])}**" for p in presets) + " |")
    seconds = []
    for preset in presets:
        chosen = [r for r in rows if r["preset"] == preset]
        tiles = sum(8 * r["bytes"] / r["bpp"] / 65536 for r in chosen)
        seconds.append(f"{sum(r['ingest_seconds'] for r in chosen) / tiles:.1f}")
    print("| seconds per 256x256 pixels | " + " | ".join(seconds) + " |")


# Landsat files through the archive in the item's mapping and in each tile's value window
# (benchmarks/raster_ttft.py --windows tile,item): result stems and what each file is
VALUE_WINDOWS = (
    ("raster_windows_landsat256_hyperprior", "4 files of 256x256, one tile each"),
    ("raster_windows_landsat1024_hyperprior", "2 files of 1024x1024, tiles of 256"),
    ("raster_windows_landsat1024_tile512_hyperprior", "2 files of 1024x1024, tiles of 512"),
    ("raster_windows_landsat1024_tile1024_hyperprior", "2 files of 1024x1024, one tile each"),
    ("raster_windows_landsat1024_tile512_checkerboard", "2 files of 1024x1024, tiles of 512, checkerboard points"),
)


# the bare codecs in both mappings (benchmarks/base_codec.py --window): (part, family, result
# stem in the item's mapping, in each image's window)
BARE_WINDOWS = (
    ("landsat", "rgb", "base_codec_window_item", "base_codec"),
    ("landsat", "gray16", "base_codec", "base_codec_window_tile"),
    ("landsat-bands", "gray16", "base_codec", "base_codec_window_tile"),
)


def bare_windows(results: Path) -> None:
    """The hyperprior families' per-image BD-rate against JPEG 2000 on the Landsat tiles, each
    image in the item's mapping and in its own value window."""
    print("| set | family | item's mapping | own window |")
    print("| --- | --- | --- | --- |")
    for part, family, item, tile in BARE_WINDOWS:
        cells = []
        for stem in (item, tile):
            vs = json.loads((results / f"{stem}.json").read_text())[part]["vs_classical"]
            cells.append(pct(vs[f"learned:{family}"]["jpeg2000"]["per_image_bd_rate_mean"]))
        print(f"| {part} | {family} | {cells[0]} | {cells[1]} |")


def value_windows(results: Path) -> None:
    """Per file set, the untuned rgb hyperprior's BD-rate against JPEG 2000 in the item's mapping
    and in each tile's window (mean of the per-file ones)."""
    print("| files | item's mapping | tile's window |")
    print("| --- | --- | --- |")
    for stem, files in VALUE_WINDOWS:
        if (results / f"{stem}.json").exists():
            mean = json.loads((results / f"{stem}.json").read_text())["bd_rate_vs_jpeg2000_percent"]["mean"]
            print(f"| {files} | {pct(mean['none, item window'])} | **{pct(mean['none'])}** |")


def transform_ceiling(result: dict) -> None:
    """Per rate point: the real coding, the transforms with rounded and with unquantised
    latents, and JPEG 2000 at the same rate (benchmarks/transform_ceiling.py)."""
    print("| codec | bpp | PSNR coded | latents rounded | no quantisation | JPEG 2000 at that bpp |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        figures = (r["psnr_coded"], r["psnr_rounded"], r["psnr_unquantised"], r["psnr_jpeg2000_same_bpp"])
        print(f"| {r['codec']} | {r['bpp']:.3f} | " + " | ".join(f"{v:.2f}" for v in figures) + " |")


# the collar coded as an ingest codes it, and as stored (benchmarks/nodata_collar.py)
NODATA_COLLAR = (
    "nodata_collar",
    "nodata_collar_as_stored",
    "nodata_collar_default",
    "nodata_collar_default_tile_trade_off",
    "nodata_collar_as_stored_default",
)


def nodata_collar(results: Path) -> None:
    """Per file and curve, the BD-rate against JPEG 2000 on the file as stored and filled."""
    print("| file | curve | against JPEG 2000 as stored | against JPEG 2000 on the filled file |")
    print("| --- | --- | --- | --- |")
    found = [
        json.loads((results / f"{stem}.json").read_text())
        for stem in NODATA_COLLAR
        if (results / f"{stem}.json").exists()
    ]
    for file in found[0]["bd_rate_percent"]:
        for result in found:
            versus = result["bd_rate_percent"][file]
            for curve in versus["vs JPEG 2000 as stored"]:
                cells = [pct(versus[k][curve]) for k in ("vs JPEG 2000 as stored", "vs JPEG 2000 filled")]
                print(f"| {file} | {curve} | " + " | ".join(cells) + " |")


# whole slices of ct_lung_A0002 through a DICOM ingest, one tile of 512 each (benchmarks/dicom_ttft.py)
CT_SLICES = ("dicom_ttft_ct_slice05_tile512", "dicom_ttft_ct_slice_tile512", "dicom_ttft_ct_slice25_tile512")


def ct_slices(results: Path, base: dict) -> None:
    """Each slice's BD-rate against JPEG 2000 through the archive under each preset, beside the
    base codec's on the same slice coded as one image, and their means."""
    ct = base["ct"]
    alone = dict(zip(ct["images"], ct["vs_classical"]["learned:gray16"]["jpeg2000"]["per_image_bd_rate_percent"]))
    found = [
        json.loads((results / f"{stem}.json").read_text()) for stem in CT_SLICES if (results / f"{stem}.json").exists()
    ]
    presets = list(found[0]["bd_rate_vs_jpeg2000_percent"])
    print("| slice | coded as one image | " + " | ".join(PRESET_NAMES.get(p, p) for p in presets) + " |")
    print("| --- | --- |" + " --- |" * len(presets))
    columns = []
    for r in found:
        name = Path(r["source"]).stem
        row = [alone[name]] + [r["bd_rate_vs_jpeg2000_percent"][p] for p in presets]
        columns.append(row)
        print(f"| {name} | " + " | ".join(pct(v) for v in row) + " |")
    means = [sum(c[i] for c in columns) / len(columns) for i in range(len(columns[0]))]
    print(f"| mean of {len(found)} | " + " | ".join(f"**{pct(v)}**" for v in means) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    results = Path(args.results)
    base = json.loads((results / "base_codec.json").read_text())
    for title, table in (
        ("Base codecs against the classical codecs", base_codecs),
        ("Each rate point", learned_points),
        ("Published Kodak curves", anchors),
        ("Lossless sizes (bpp, mean over images)", lossless),
        ("CT at clinical ratios: PSNR over HU, dB (slices counted)", clinical),
    ):
        print(f"\n### {title}\n")
        table(base)
    for part, family in (("kodak", "rgb"), ("ct", "gray16")):
        if (results / f"transform_ceiling_{part}.json").exists():
            print(f"\n### The {family} family's transforms on {part} (PSNR, dB)\n")
            transform_ceiling(json.loads((results / f"transform_ceiling_{part}.json").read_text()))
    grown = results / "base_codec_checkerboard.json"
    if grown.exists():
        print("\n### The families with a checkerboard context\n")
        checkerboard_family(base, json.loads(grown.read_text()))
    for family, (_, grown_stems, _) in CHECKERBOARD_TASKS.items():
        if any((results / f"{stem}.json").exists() for stem in grown_stems):
            print(f"\n### Tasks on the {family} checkerboard points (4 crops, BD-rate of the mean curves)\n")
            checkerboard_tasks(results, family)
    for family in ("gray16", "rgb"):
        gain = results / f"context_gain_{family}.json"
        if gain.exists():
            print(f"\n### What the context saves at each {family} point\n")
            context_gain(json.loads(gain.read_text()))
    print("\n### Task curves")
    tasks(results)
    print("\n### Latent refinement schedules (per-image BD-rate mean)\n")
    latent_refinement(results)
    for title, columns, rows in WIDER_SCHEDULES:
        print(f"\n### Latent refinement {title} (per-image BD-rate mean)\n")
        schedule_table(results, columns, rows)
    if any((results / f"{stem}.json").exists() for stem in CT_SLICES):
        print("\n### Through the archive: whole CT slices as one tile, BD-rate against JPEG 2000\n")
        ct_slices(results, base)
    if all((results / f"{stem}.json").exists() for _, _, *stems in BARE_WINDOWS for stem in stems):
        print("\n### The bare codecs in both mappings, BD-rate against JPEG 2000\n")
        bare_windows(results)
    if any((results / f"{stem}.json").exists() for stem, _ in VALUE_WINDOWS):
        print("\n### Through the archive: value windows, untuned, BD-rate against JPEG 2000\n")
        value_windows(results)
    if (results / f"{NODATA_COLLAR[0]}.json").exists():
        print("\n### Through the archive: scenes with a nodata collar, BD-rate over the valid pixels\n")
        nodata_collar(results)
    for stem, title in ARCHIVE_TUNING:
        if (results / f"{stem}.json").exists():
            print(f"\n### Through the archive: {title}\n")
            archive_tuning(json.loads((results / f"{stem}.json").read_text()))


if __name__ == "__main__":
    main()
