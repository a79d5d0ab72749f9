"""The `ttft` command line. Every user error prints one line and exits non-zero."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import typing
import warnings
from pathlib import Path


def _quiet_third_party() -> None:
    import logging
    import os

    # a closed network: the temporary Prefect server's telemetry would only log its failure
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    # s3fs leaves its aiohttp session to the interpreter's exit, where asyncio reports it as unclosed
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.functional")
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")  # damaged files get our own error line


def cmd_codecs(args) -> int:
    from ttft_archive.adapters.zoo import family_rate_points, list_codecs, quality_of
    from ttft_archive.ttft_core.backbones import PRESETS, build, preset, registered

    sizes = []
    for name, spec in PRESETS.items():
        model = build(preset(name))
        sizes.append(
            {
                "name": name,
                "backbone": spec["backbone"],
                "encoder_parameters": sum(p.numel() for p in model.g_a.parameters()),
                "decoder_parameters": sum(p.numel() for p in model.g_s.parameters()),
                "config": model.config.to_dict(),
            }
        )
    lines = {(e.card.get("family"), e.config.backbone) for e in list_codecs()}
    quality = {e.codec_id: quality_of(e.codec_id) for f, b in lines for e in family_rate_points(f, b)}
    shipped = [
        {"id": e.codec_id, "quality": quality.get(e.codec_id), "weights": str(e.weights), **e.card}
        for e in list_codecs()
    ]
    if args.json:
        print(json.dumps({"backbones": registered(), "sizes": sizes, "codecs": shipped}, indent=2))
        return 0
    print("backbones: " + ", ".join(registered()))
    print(f"{'size':<19}{'backbone':<12}{'N':>5}{'M':>5}{'encoder params':>16}{'decoder params':>16}")
    for s in sizes:
        c = s["config"]
        print(
            f"{s['name']:<19}{s['backbone']:<12}{c['N']:>5}{c['M']:>5}{s['encoder_parameters']:>16,}{s['decoder_parameters']:>16,}"
        )
    print(f"shipped codecs: {len(shipped) or 'none yet'}")
    for c in shipped:
        print(
            f"  {c['id']:<28} {c.get('family', ''):<9} {c['backbone']['backbone']:<11} quality {c['quality']}  "
            f"lambda {c.get('lambda', '?')}  "
            f"steps {c.get('steps', '?')}"
            + (f"  (context on {c['grown_from']['id']})" if c.get("grown_from") else "")
            + ("  (opt-in: never the default)" if c.get("opt_in") else "")
        )
    return 0


def cmd_tasks(args) -> int:
    from ttft_archive.flows.jobs.task_catalog import describe_all

    tasks = describe_all()
    if args.json:
        print(json.dumps(tasks, indent=2))
        return 0
    for t in tasks:
        better = "higher" if t["higher_is_better"] else "lower"
        weight = (
            "" if t["lambda_scale"] == 1 else f", loss weighted at {t['lambda_scale']:.3g} of the codec's trade-off"
        )
        print(f"{t['name']:<24}{t['description']}  [{t['metric']}, {better} is better{weight}]")
    return 0


def _report_line(r: dict) -> str:
    how = r["codec"] + (f" + TTFT {r['ttft_steps']} steps" if r["ttft_steps"] else "")
    task = "" if r["task"] == "pixel" else f"{r['task']} {r['task_metric']} {r['task_value']:.4g}, "
    note = "" if r["trained"] else "  (untrained weights: PSNR is meaningless)"
    return (
        f"{Path(r['image']).name} {r['height']}x{r['width']}, {how}: {r['bytes']} bytes, "
        f"{r['bpp']:.3f} bpp, PSNR {r['psnr_db']:.2f} dB, {task}"
        f"encode {r['encode_seconds']:.2f} s, decode {r['decode_seconds']:.2f} s{note}"
    )


def cmd_demo(args) -> int:
    import os

    # the report is the demo's output; Prefect's own lines (a temporary server starting and
    # stopping, task states) stay at warnings unless asked for
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    from ttft_archive.flows.orchestration.demo import run_demo

    report = run_demo(args.archive, args.out, args.ttft_steps, fresh=not args.keep, show_progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"archive {report['archive']} ({args.ttft_steps} TTFT steps per tile):")
    print(f"  {'item':<28}{'profile':<16}{'tiles':>6}{'bytes':>9}{'bpp':>8}{'ratio':>9}{'fidelity':>10}{'TTFT s':>8}")
    for r in report["items"]:
        print(
            f"  {r['id'][:27]:<28}{r['profile']:<16}{r['tiles']:>6}{r['bytes']:>9}{r['bpp']:>8.3f}"
            f"{r['ratio']:>8.1f}:1{r['fidelity_mean']:>9.2f} {r['ttft_seconds']:>7.1f}"
        )
    for q in report["queries"]:
        tiles = f"{q['tiles_read']} tile{'' if q['tiles_read'] == 1 else 's'}"
        print(f"  query {q['item'][:27]} -> {q['out']} ({tiles} decoded)")
    print(f"done in {report['seconds']:.1f} s. fidelity: PSNR (dB) for pixel, PSNR inside the lung window for CT")
    untrained = sorted({r["codec"] for r in report["items"] if r["codec"].startswith("untrained-")})
    if untrained:
        print(f"note: no shipped codec for {', '.join(untrained)}: untrained weights, so fidelity is meaningless")
    return 0


def cmd_roundtrip(args) -> int:
    from ttft_archive.flows.evaluation.roundtrip import roundtrip

    reports = [roundtrip(args.image, _ingest_options(args))]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        for r in reports:
            print(_report_line(r))
    return 0


def cmd_train_base(args) -> int:
    from ttft_archive.flows.training.base_codec import TrainBaseJob, run

    job = _model_from_args(TrainBaseJob, args, command="ttft " + shlex.join(sys.argv[1:]))
    path = run(job, log=lambda line: print(line, flush=True))
    print(f"done: {path}" if path else "done (no export requested)")
    return 0


def cmd_train_adapter(args) -> int:
    from ttft_archive.flows.training.task_adapter import TrainAdapterJob, run

    job = _model_from_args(TrainAdapterJob, args, command="ttft " + shlex.join(sys.argv[1:]))
    path = run(job, log=lambda line: print(line, flush=True))
    print(f"done: {path}")
    return 0


def cmd_adapters(args) -> int:
    from ttft_archive.adapters.zoo.adapter_store import list_adapters

    listing = [{"id": e.adapter_id, "path": str(e.path), **card} for e, card in list_adapters()]
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"stage-1 adapters: {len(listing) or 'none yet'}")
    for a in listing:
        ev = a.get("evaluation", {})
        figures = "  ".join(
            f"{k} bpp {v['bpp']:.3f} {a['task_metric']} {v[a['task_metric']]:.4g}"
            for k, v in ev.items()
            if a.get("task_metric") in v
        )
        print(f"  {a['id']:<40} steps {a.get('steps', '?')}  lambda {a.get('lambda', 0):.4g}  {figures}")
    return 0


def _storage_options() -> dict | None:
    from ttft_archive.flows.options import storage_options_from_env

    return storage_options_from_env()


def _parse_bbox(text: str | None) -> tuple | None:
    from ttft_archive.ttft_core.errors import TTFTError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise TTFTError(f"--bbox {text!r}: expected XMIN,YMIN,XMAX,YMAX")
    return values


def _is_dicom(source: str) -> bool:
    if Path(source).is_dir() or source.lower().endswith(".dcm"):
        return True
    try:
        with open(source, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def cmd_ingest(args) -> int:
    from ttft_archive.flows.jobs.dicom import ingest_dicom
    from ttft_archive.flows.jobs.raster import ingest_raster

    options, storage_options = _ingest_options(args), _storage_options()
    reports = []
    for source in args.sources:
        bar = _ProgressBar(Path(source).name, enabled=not args.json)
        if _is_dicom(source):
            reports += ingest_dicom([source], args.archive, options, progress=bar, storage_options=storage_options)
        else:
            reports.append(ingest_raster(source, args.archive, options, progress=bar, storage_options=storage_options))
        bar.close()
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for r in reports:
            print(
                f"{r['id']}/{r['profile']}: {r['tiles']} tiles ({r['empty_tiles']} empty, {r['written_tiles']} written now), "
                f"{r['bytes']} bytes, {r['bpp']:.3f} bpp, ratio {r['ratio']:.1f}:1, {r['seconds']:.1f} s, {r['codec']}"
            )
    return 0


def cmd_ls(args) -> int:
    from ttft_archive.flows.jobs.tiles import listing

    items = listing(args.archive, _storage_options())
    if args.json:
        print(json.dumps({"items": items}, indent=2))
        return 0
    for item in items:
        print(f"{item['id']}: {_source_line(item['kind'], item['source'])}")
        for p in item["profiles"]:
            state = "complete" if p["complete"] else "INCOMPLETE"
            print(
                f"  {p['profile']:<24}{p['tiles']:>6} tiles{p['bytes']:>12} bytes  {p['bpp']:.3f} bpp  {state}"
                f"  {p['codec']}"
            )
    return 0


def _source_line(kind: str, source: dict) -> str:
    shape = "x".join(map(str, source["shape"]))
    if kind == "dicom":
        return f"DICOM {source['modality']}, {shape} slices x rows x cols, {source['dtype']}"
    bands = ", ".join(f"{b} {name}".rstrip() for b, name in source["bands"].items())
    bounds = ",".join(f"{v:.10g}" for v in source["bounds"])
    return f"raster {shape} bands x rows x cols, {source['dtype']}, {source['crs']}, bounds {bounds}, bands: {bands}"


def cmd_query(args) -> int:
    from ttft_archive.flows.jobs.query import query_item

    r = query_item(
        args.archive, args.item, args.out, args.task, _parse_bbox(args.bbox), args.crs, args.slices, _storage_options()
    )
    print(json.dumps(r, indent=2) if args.json else f"wrote {r['returned']} from {r['tiles_read']} tiles")
    return 0


def cmd_eval(args) -> int:
    from ttft_archive.flows.evaluation.evaluate import LEARNED, evaluate, plot

    variants = tuple(args.variants.split(",")) if args.variants else LEARNED + ("jpeg2000", "htj2k", "jpegxl")
    result = evaluate(
        args.task,
        args.data,
        count=args.count,
        size=args.size,
        ttft_steps=args.ttft_steps,
        open_from=args.open_from,
        variants=variants,
        preset=args.preset,
        device=args.device,
        log=(lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True)),
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.task} on {result['description']} ({result['metric']}, {args.ttft_steps} TTFT steps):")
    print("  BD-rate %: the mean of per-image BD-rates (pooled tasks: none), and of the mean curves")
    print(f"  {'curve':<13}{'against':<13}{'points':>8}{'per image':>11}{'of means':>10}{'BD-metric':>11}   rate")
    for key, rate_name in (("table", "whole tiles"), ("table_payload", "tile payload")):
        for row in result[key]:
            rates = [row.get("per_image_bd_rate_mean"), row["bd_rate_percent"]]
            per_image, of_means = ("-" if r is None else f"{r:+.1f}" for r in rates)
            metric = "-" if row["bd_metric"] is None else f"{row['bd_metric']:+.3f}"
            print(
                f"  {row['curve']:<13}{row['against']:<13}{'/'.join(map(str, row['points'])):>8}"
                f"{per_image:>11}{of_means:>10}{metric:>11}   {rate_name}"
            )
    if result["ttft_seconds_per_tile"] is not None:
        print(f"  TTFT: {result['ttft_seconds_per_tile']:.2f} s per {args.size}x{args.size} tile")
    return 0


def cmd_verify(args) -> int:
    from ttft_archive.flows.jobs.tiles import verify

    problems = verify(args.archive, args.item, _storage_options())
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("ok: every tile checks and every profile is complete")
    return 1 if problems else 0


def cmd_serve(args) -> int:
    from ttft_archive.configs.settings import load_settings
    from ttft_archive.flows.orchestration.deployments import deployment_specs, select, serve

    # flags override one field each (an override section replaces the preset's whole section)
    serve_section = load_settings(args.preset).serve.model_dump()
    serve_section["inbox"].update({k: v for k, v in {"path": args.inbox, "cron": args.cron}.items() if v is not None})
    serve_section["archive"] = args.archive or serve_section["archive"]
    settings = load_settings(args.preset, serve=serve_section)
    serve(select(deployment_specs(settings), args.only), limit=args.limit)
    return 0


def _ProgressBar(label: str, enabled: bool):
    from ttft_archive.flows.options import ProgressBar

    return ProgressBar(label, enabled)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttft", description="Task-aware learned-codec archive")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "codecs", help="list backbones, their sizes and the shipped codecs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_codecs)

    p = _command(sub, "roundtrip", help="compress and decompress one image, print bytes, bpp and PSNR")
    p.add_argument("image", nargs="?", default=None, help="an 8-bit RGB image (default: the bundled sample)")
    _add_ingest_options(p, skip=("tile", "bands", "band_names"))
    _add_task_spec(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_roundtrip)

    p = _command(sub, "demo", help="the main job on the bundled samples: ingest, query, report")
    p.add_argument("--archive", default="demo-archive.zarr", help="a local folder (recreated unless --keep)")
    p.add_argument("--out", default="demo-output", help="where the queried GeoTIFF and DICOM series go")
    p.add_argument("--ttft-steps", type=int, default=5, help="TTFT steps per tile (a short demo budget)")
    p.add_argument("--keep", action="store_true", help="keep an existing archive (re-ingest changes nothing)")
    p.add_argument("--verbose", action="store_true", help="show Prefect's log lines too")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "tasks", help="list the built-in tasks and the user tasks registered")
    _add_task_spec(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_tasks)

    p = _command(sub, "ingest", help="tile rasters and DICOM series, code each tile into an archive")
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="raster files (GeoTIFF, COG), DICOM files or folders of a series"
    )
    p.add_argument("--archive", required=True, help="a local folder or s3://bucket/prefix")
    _add_ingest_options(p)
    _add_task_spec(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_ingest)

    p = _command(sub, "ls", help="items of an archive with their task profiles")
    p.add_argument("--archive", required=True, help="a local folder or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_ls)

    p = _command(sub, "query", help="decode a window of an item into a GeoTIFF")
    p.add_argument("--archive", required=True, help="a local folder or s3://bucket/prefix")
    p.add_argument("--item", required=True, help="the item's id (`ttft ls`)")
    p.add_argument("--task", default="pixel", help="the task profile to decode")
    p.add_argument("--bbox", default=None, help="XMIN,YMIN,XMAX,YMAX in the item's CRS (or --crs)")
    p.add_argument("--crs", default=None, help="the CRS of --bbox, e.g. EPSG:4326; None: the item's own")
    p.add_argument("--slices", default=None, help="A:B, the slices of a DICOM series (B excluded)")
    p.add_argument("--out", required=True, help="a GeoTIFF path, or a folder for a DICOM series")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_query)

    p = _command(sub, "eval", help="rate-task curves and BD tables: base, stage-1, TTFT, classical codecs")
    p.add_argument("--task", required=True, help="the task whose curves are measured (`ttft tasks`)")
    p.add_argument("--data", default="kodak", help="evaluation set: kodak, landsat, ct or multispectral")
    p.add_argument("--count", type=int, default=4, help="images (tiles, slices) of the set")
    p.add_argument("--size", type=int, default=256, help="crop size")
    p.add_argument("--ttft-steps", type=int, default=40, help="TTFT steps per image of the ttft variants")
    p.add_argument("--open-from", default=None, help="open set: start TTFT from this task's adapter")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of base,stage1,ttft-closed,ttft-open,jpeg2000,htj2k,jpegxl",
    )
    p.add_argument("--preset", default=None, help="a settings preset or YAML file")
    p.add_argument("--out", default=None, help="write the result JSON here too")
    p.add_argument("--plot", default=None, help="write the RD plot (PNG) here")
    _add_device(p, "TTFT runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_eval)

    p = _command(sub, "verify", help="check every tile's checksum and every profile's completeness")
    p.add_argument("--archive", required=True, help="a local folder or s3://bucket/prefix")
    p.add_argument("--item", default=None, help="check this item only; None: every item")
    p.set_defaults(func=cmd_verify)

    p = _command(sub, "serve", help="serve the Prefect deployments from this machine (inbox on a cron)")
    p.add_argument("--preset", default=None, help="a settings preset or YAML file (its serve: section)")
    p.add_argument("--archive", default=None, help="the archive every deployment uses (default: serve.archive)")
    p.add_argument("--inbox", default=None, help="a folder or s3:// prefix to ingest on the cron (serve.inbox.path)")
    p.add_argument("--cron", default=None, help="when the inbox is scanned (serve.inbox.cron)")
    p.add_argument("--only", nargs="+", default=None, metavar="FLOW", help="serve only these flows")
    p.add_argument("--limit", type=int, default=None, help="most flow runs at once on this machine")
    p.set_defaults(func=cmd_serve)

    p = _command(sub, "train-base", help="train a base codec (resumable; run it in the background)")
    _add_model_flags(p, _train_base_job(), positional=("codec_id", "data"), skip=("command",))
    p.set_defaults(func=cmd_train_base)

    p = _command(sub, "train-adapter", help="stage 1: train a task's adapter for a codec (resumable)")
    _add_model_flags(p, _train_adapter_job(), positional=("data",), required=("task", "codec"), skip=("command",))
    _add_task_spec(p)
    p.set_defaults(func=cmd_train_adapter)

    p = _command(sub, "adapters", help="the stage-1 adapters in the store, with their held-out figures")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_adapters)
    return parser


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    # every option's help shows its default
    return sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _version() -> str:
    from ttft_archive import __version__

    return __version__


def _add_ingest_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from ttft_archive.configs import IngestOptions

    _add_model_flags(p, IngestOptions, skip=skip)


def _add_model_flags(
    p: argparse.ArgumentParser,
    model,
    positional: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> None:
    """One argument per field of a pydantic ``model`` (the jobs' and flows' parameter records),
    with its default and description: the command line states none of them again."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _flag_type(field.annotation)
        if field.annotation is bool:  # a switch: --name sets it, --no-name clears it
            flag = "--" + name.replace("_", "-")
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=field.description)
        elif name in positional:
            many = typing.get_origin(field.annotation) is list
            p.add_argument(name, nargs="+" if many else None, type=kind, help=field.description)
        elif name in required or field.is_required():
            p.add_argument("--" + name.replace("_", "-"), type=kind, required=True, help=field.description)
        else:
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=field.default, help=field.description)


def _flag_type(annotation) -> type:
    """int, float or str: what an argument's text becomes (mappings are parsed by the model)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is list:
        kinds = list(typing.get_args(annotation))
    return kinds[0] if kinds[0] in (int, float, str) else str


def _model_from_args(model, args, **extra):
    """The ``model`` record of the parsed arguments, checked: a bad value is one TTFTError line."""
    from pydantic import ValidationError

    from ttft_archive.ttft_core.errors import TTFTError

    try:
        return model(**{k: getattr(args, k) for k in model.model_fields if hasattr(args, k)} | extra)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise TTFTError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def _train_base_job():
    from ttft_archive.flows.training.base_codec import TrainBaseJob

    return TrainBaseJob


def _train_adapter_job():
    from ttft_archive.flows.training.task_adapter import TrainAdapterJob

    return TrainAdapterJob


def _ingest_options(args):
    from ttft_archive.configs import IngestOptions

    return IngestOptions.of(**{k: getattr(args, k) for k in IngestOptions.model_fields if hasattr(args, k)})


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default=None,
        help=f"where {what}: auto (a GPU when there is one), cpu, cuda or "
        "cuda:N (default: the settings' ttft.device, auto); tiles are coded on the CPU either way",
    )


def _add_task_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task-spec",
        action="append",
        default=[],
        metavar="YAML",
        help="register a user network task from a spec file (repeatable; see docs/method.md)",
    )


def _register_task_specs(args) -> None:
    from ttft_archive.adapters.task_networks import register_spec_file

    for spec in getattr(args, "task_spec", []):
        register_spec_file(spec)


def _joined_values(argv: list[str]) -> list[str]:
    """``--bbox -71.2,42.1,...`` as ``--bbox=-71.2,42.1,...``: argparse takes a value that starts
    with a dash for an option of its own, as it would a western longitude."""
    out = []
    for arg in argv:
        if out and out[-1] == "--bbox" and arg.startswith("-"):
            out[-1] = f"--bbox={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    from ttft_archive.ttft_core.errors import TTFTError

    args = build_parser().parse_args(_joined_values(sys.argv[1:] if argv is None else argv))
    try:
        _register_task_specs(args)
        return args.func(args)
    except TTFTError as exc:
        print(f"ttft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
