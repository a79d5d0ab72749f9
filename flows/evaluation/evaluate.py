"""`ttft eval`: rate-task curves from real bytes, per task and evaluation set, for the base codecs,
the stage-1 adapter without TTFT, TTFT from the task's own adapter (closed set) and from another
task's or the zero adapter (open set), and the classical codecs; with BD-rate and BD-metric tables.

Each learned curve has one point per rate point of the family (a codec, and for the adapter
variants that codec's adapter); a variant that lacks an adapter at some rate point has fewer
points, and a BD figure is given only where both curves have the four that a cubic fit needs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ttft_archive.adapters.classical import RATES
from ttft_archive.adapters.classical import sweep as classical_sweep
from ttft_archive.adapters.eval_sets import EvalSet, open_eval_set
from ttft_archive.adapters.zoo import DEFAULT_BACKBONE, family_rate_points, shipped_backbone
from ttft_archive.configs import load_settings
from ttft_archive.flows.jobs import codec_setup
from ttft_archive.flows.jobs.task_catalog import get_task
from ttft_archive.ttft_core import TTFTError, bitstream
from ttft_archive.ttft_core.band_context import within_bands
from ttft_archive.ttft_core.metrics import bd_metric, bd_rate, per_image_bd_rate, per_image_curves
from ttft_archive.ttft_core.tasks import Task
from ttft_archive.ttft_core.tile_coding import code_tiles

LEARNED = ("base", "stage1", "ttft-closed", "ttft-open")
CLASSICAL = ("jpeg2000", "htj2k", "jpegxl")
# (curve, against): the comparisons the table reports, the paper's first
PAIRS = (
    ("ttft-closed", "stage1"),
    ("ttft-open", "base"),
    ("stage1", "base"),
    ("ttft-closed", "base"),
    ("ttft-closed", "jpeg2000"),
    ("ttft-open", "jpeg2000"),
    ("base", "jpeg2000"),
    ("ttft-closed", "htj2k"),
    ("ttft-closed", "jpegxl"),
    ("ttft-open", "htj2k"),
    ("ttft-open", "jpegxl"),
)
# the same between learned curves only, on the tiles' payload: their fixed headers (codec and
# adapter ids and sha256s, about 150 bytes a tile) left out, as whole-image figures nearly do
LEARNED_PAIRS = tuple((a, b) for a, b in PAIRS if a in LEARNED and b in LEARNED)

Log = Callable[[str], None]


def _variant_settings(variant: str, ttft_steps: int, open_from: str | None, preset: str | None, device: str | None):
    adapter = {
        "base": {"stage1": False, "from_task": None},
        "stage1": {"stage1": True, "from_task": None},
        "ttft-closed": {"stage1": True, "from_task": None},
        "ttft-open": {"stage1": False, "from_task": open_from},
    }[variant]
    steps = ttft_steps if variant.startswith("ttft") else 0
    ttft = {"steps": steps} | ({"device": device} if device else {})
    return load_settings(preset, adapter=adapter, ttft=ttft), steps


def _learned_point(
    variant: str,
    codec_ids: list[str],
    eval_set: EvalSet,
    task: Task,
    ttft_steps: int,
    open_from: str | None,
    preset: str | None,
    device: str | None,
) -> dict | None:
    """One rate point: each band group coded by its codec (``codec_ids``, one per group), tuned
    and judged on the whole task (the other bands in place); bytes summed over the groups."""
    settings, steps = _variant_settings(variant, ttft_steps, open_from, preset, device)
    coders = []
    for codec_id, group in zip(codec_ids, eval_set.groups):
        codec, ttft_config = codec_setup.prepare(settings, codec_id, len(group), task.name)
        if variant in ("stage1", "ttft-closed") and codec.adapter_id != f"{codec_id}--{task.name}":
            return None  # no stage-1 adapter for this task at this rate point
        coders.append((codec, ttft_config))
    rows, decodings = [], []
    for image in eval_set.images:
        decoded, nbytes, payload, seconds, steps_run = image.x.clone(), 0, 0, 0.0, 0
        for (codec, ttft_config), group in zip(coders, eval_set.groups):
            group_task = within_bands(task, image.x, group) if len(eval_set.groups) > 1 else task
            [tile], _ = code_tiles(codec, [image.x[group]], [group_task], ttft_config)
            seconds += tile.ttft_seconds
            steps_run += tile.ttft_steps
            decoded[group] = tile.x_hat
            nbytes += len(tile.data)
            payload += bitstream.payload_size(tile.data)
        pixels = image.x[0].numel()
        rows.append(
            {
                "bpp": 8 * nbytes / pixels,
                "payload_bpp": 8 * payload / pixels,
                "metric": task.metric(decoded, image.x),
                "ttft_seconds": seconds,
                "ttft_steps": steps_run,
            }
        )
        decodings.append(decoded)
    return {
        "codec": "+".join(codec_ids),
        "adapter": "+".join(str(c.adapter_id) for c, _ in coders),
        **_summary(rows, task, eval_set, decodings),
    }


def rate_point_codecs(families: list[str], backbone: str = DEFAULT_BACKBONE) -> list[list[str]]:
    """The codecs of each rate point, one per band group: the i-th of each family's points of
    ``backbone`` where it ships it, else of the default backbone (a family with fewer points
    repeats its highest)."""
    points = [[e.codec_id for e in family_rate_points(f, shipped_backbone(f, backbone))] for f in families]
    missing = [f for f, p in zip(families, points) if not p]
    if missing:
        raise TTFTError(f"no shipped codec of family {missing[0]!r} to evaluate")
    return [[p[min(i, len(p) - 1)] for p in points] for i in range(max(len(p) for p in points))]


def _classical_curve(name: str, eval_set: EvalSet, task: Task) -> list[dict]:
    """The codec swept per image to the set's target rates (adapters.classical): the i-th point
    holds every image coded at the i-th target rate, so a pooled metric pools equal rates."""
    per_image = [
        classical_sweep(name, image.stored, RATES[eval_set.name], eval_set.groups) for image in eval_set.images
    ]
    points = []
    for i, target in enumerate(RATES[eval_set.name]):
        rows, decodings = [], []
        for image, swept in zip(eval_set.images, per_image):
            decodings.append(image.to_unit(swept[i].decoded))
            rows.append(
                {"bpp": 8 * swept[i].nbytes / image.x[0].numel(), "metric": task.metric(decodings[-1], image.x)}
            )
        points.append(
            {
                "target_bpp": target,
                "levels": [swept[i].level for swept in per_image],
                **_summary(rows, task, eval_set, decodings),
            }
        )
    return points


def _summary(rows: list[dict], task: Task, eval_set: EvalSet, decodings: list) -> dict:
    """The mean of each figure over the images, the task metric pooled over them where the task
    says so; each image's own rate and metric as well (the per-image BD-rates are taken on them)."""
    point = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if task.pooled:
        point["metric"] = task.metric(torch.stack(decodings), torch.stack([image.x for image in eval_set.images]))
    per_image = {k: [r[k] for r in rows] for k in ("bpp", "payload_bpp", "metric") if k in rows[0]}
    return point | {"per_image": per_image}


def compare(
    curves: dict[str, list[dict]],
    higher_is_better: bool,
    pooled: bool = False,
    rate: str = "bpp",
    pairs: tuple[tuple[str, str], ...] = PAIRS,
) -> list[dict]:
    """BD-rate (percent; negative: fewer bits for the same task figure) and BD-metric (the task
    figure gained at the same rate) of each pair in ``pairs`` whose curves both exist, on the
    rate ``rate`` (bpp: whole tile bitstreams; payload_bpp: without their headers).

    The headline is the mean of the per-image BD-rates (each image's own two curves); the BD-rate
    and BD-metric of the mean curves stand beside it. A pooled task (Dice, IoU over the set) has
    no per-image figure: its curve is the pooled metric at equal rates, and that is its headline."""
    sign = 1.0 if higher_is_better else -1.0
    table = []
    for curve, against in pairs:
        a, b = curves.get(against) or [], curves.get(curve) or []
        if not a or not b:
            continue  # a variant not run, or without a single adapter
        row = {"curve": curve, "against": against, "points": [len(b), len(a)]}
        if min(len(a), len(b)) < 4:
            table.append(
                row
                | {
                    "per_image_bd_rate_mean": None,
                    "bd_rate_percent": None,
                    "bd_metric": None,
                    "why": "fewer than 4 points on a curve",
                }
            )
            continue
        args = (
            [p[rate] for p in a],
            [sign * p["metric"] for p in a],
            [p[rate] for p in b],
            [sign * p["metric"] for p in b],
        )
        row |= {"per_image_bd_rate_mean": None} if pooled else _per_image(a, b, rate, sign)
        try:
            table.append(row | {"bd_rate_percent": bd_rate(*args), "bd_metric": sign * bd_metric(*args)})
        except TTFTError as exc:
            table.append(row | {"bd_rate_percent": None, "bd_metric": None, "why": str(exc)})
    return table


def _per_image(a: list[dict], b: list[dict], rate: str, sign: float) -> dict:
    """Per-image BD-rates of curve b against curve a, from each point's per-image rates and metrics."""
    if not all("per_image" in p for p in a + b):
        return {"per_image_bd_rate_mean": None, "why_no_per_image": "a curve measured without per-image rates"}
    summary = per_image_bd_rate(per_image_curves(a, "metric", rate, sign), per_image_curves(b, "metric", rate, sign))
    return {k: summary[k] for k in ("per_image_bd_rate_mean", "per_image_bd_rate_median", "images_counted")} | {
        "per_image_bd_rate_percent": summary["per_image_bd_rate_percent"]
    }


def evaluate(
    task: str,
    data: str,
    count: int = 4,
    size: int = 256,
    ttft_steps: int = 40,
    open_from: str | None = None,
    variants: tuple[str, ...] = LEARNED + CLASSICAL,
    preset: str | None = None,
    log: Log = print,
    device: str | None = None,
) -> dict:
    """One task on one evaluation set: every variant's curve, the BD table and TTFT timings;
    ``device``: where TTFT runs (None: the settings' ttft.device)."""
    unknown = sorted(set(variants) - set(LEARNED) - set(CLASSICAL))
    if unknown:
        raise TTFTError(f"unknown evaluation variants {unknown}; known: {', '.join(LEARNED + CLASSICAL)}")
    eval_set = open_eval_set(data, count, size)
    the_task = get_task(task, bands=eval_set.bands) if "bands" in get_task(task).params else get_task(task)
    curves: dict[str, list[dict]] = {}
    for variant in (v for v in variants if v in LEARNED):
        for codec_ids in rate_point_codecs(eval_set.families, load_settings(preset).codec.backbone):
            point = _learned_point(variant, codec_ids, eval_set, the_task, ttft_steps, open_from, preset, device)
            if point:
                curves.setdefault(variant, []).append(point)
                log(
                    f"{task}/{data} {variant} {point['codec']}: {point['bpp']:.4f} bpp, "
                    f"{the_task.metric_name} {point['metric']:.4f}"
                )
    for variant in (v for v in variants if v in CLASSICAL):
        curves[variant] = _classical_curve(variant, eval_set, the_task)
        log(f"{task}/{data} {variant}: {len(curves[variant])} points")
    result = {
        "task": task,
        "data": data,
        "description": eval_set.description,
        "images": len(eval_set.images),
        "metric": the_task.metric_name,
        "higher_is_better": the_task.higher_is_better,
        "pooled": the_task.pooled,
        "ttft_steps": ttft_steps,
        "open_from": open_from,
    }
    return with_curves(result, curves)


def with_curves(result: dict, curves: dict[str, list[dict]]) -> dict:
    """``result`` holding ``curves``, with the BD tables and TTFT timing that follow from them
    (also how a rerun of some variants joins the curves an earlier run measured)."""
    tuned = [p for v in ("ttft-closed", "ttft-open") for p in curves.get(v, [])]
    return result | {
        "curves": curves,
        "table": compare(curves, result["higher_is_better"], result.get("pooled", False)),
        "table_payload": compare(
            curves, result["higher_is_better"], result.get("pooled", False), "payload_bpp", LEARNED_PAIRS
        ),
        "ttft_seconds_per_tile": float(np.mean([p["ttft_seconds"] for p in tuned])) if tuned else None,
    }


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, points in result["curves"].items():
        points = sorted(points, key=lambda p: p["bpp"])
        style = "o-" if name in LEARNED else ".--"
        ax.plot([p["bpp"] for p in points], [p["metric"] for p in points], style, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes)")
    ax.set_ylabel(result["metric"])
    ax.set_title(f"{result['task']} on {result['description']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
