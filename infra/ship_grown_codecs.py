"""Ship codecs grown from shipped ones and trained only in what they add (`ttft train-base
--train context`, or the GPU recipe's `--train context`): each staged codec goes into the zoo as
the tensors it adds to the codec it grew from (a few MB instead of the whole model), and every
stage-1 adapter of that codec is bound to it as well, since the adapters' layers (g_a, g_s) are
exactly the same weights in both.

    .venv/bin/python infra/ship_grown_codecs.py runs/cb/fam/stage gray16-checkerboard-q00 ... \\
        [--to adapters/zoo/models] [--adapters-to adapters/zoo/adapters]

A staged codec whose transforms moved (joint training) is refused: its adapters must be trained
again (`ttft train-adapter`), and it ships whole.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ship(staged: Path, codec_id: str, to: Path, adapters_to: Path) -> list[str]:
    """Write ``codec_id`` from ``staged`` into ``to`` and its rebound adapters into ``adapters_to``;
    returns the adapter ids written."""
    from ttft_archive.adapters import zoo
    from ttft_archive.ttft_core import TTFTError

    entry = next((e for e in zoo.list_codecs() if e.codec_id == codec_id and e.weights.parent == staged), None)
    if entry is None:
        raise TTFTError(f"no codec {codec_id!r} staged in {staged}")
    start_card = entry.card.get("init_from_card") or {}
    base = zoo.find_codec(entry.card.get("init_from") or "")
    if base.weights.parent == staged or base.card.get("sha256") != start_card.get("sha256"):
        raise TTFTError(f"{codec_id!r} did not grow from the zoo's {base.codec_id!r} (its card's init_from_card)")
    card = {k: v for k, v in entry.card.items() if k not in ("id", "backbone", "sha256", "grown_from")}
    model = zoo.load_codec(entry)
    zoo.save_codec(to, codec_id, model, card, grown_from=base)
    return rebind_adapters(base.codec_id, codec_id, model, to / f"{codec_id}.safetensors", adapters_to)


def rebind_adapters(base_id: str, codec_id: str, model, weights: Path, adapters_to: Path) -> list[str]:
    """Every stored stage-1 adapter of ``base_id`` as an adapter of ``codec_id`` (same tensors),
    ``model`` being that codec with the weights in ``weights``."""
    from ttft_archive.adapters.adapter_files import save_adapter
    from ttft_archive.adapters.zoo.adapter_store import SEPARATOR, adapter_id, list_adapters
    from ttft_archive.ttft_core.digest import base_weights, tensors_digest

    codec_sha = tensors_digest(base_weights(model)).hex()
    written = []
    for adapter, card in list_adapters():
        if card.get("codec") != base_id:
            continue
        state, _ = adapter.load()
        task = adapter.adapter_id.split(SEPARATOR, 1)[1]
        new_id = adapter_id(codec_id, task)
        rebound = {k: v for k, v in card.items() if k != "evaluation"}
        rebound.update(
            id=new_id,
            codec=codec_id,
            codec_sha256=codec_sha,
            codec_file_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
            rebound_from={
                "adapter": adapter.adapter_id,
                "note": f"trained on {base_id}, whose g_a and g_s {codec_id} keeps unchanged; "
                "its evaluation is in that adapter's card",
            },
        )
        save_adapter(adapters_to / f"{new_id}.safetensors", state, rebound)
        written.append(new_id)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("staged", help="the folder train-base exported the grown codecs to")
    parser.add_argument("codecs", nargs="+", help="the grown codec ids to ship")
    parser.add_argument("--to", default=str(ROOT / "adapters" / "zoo" / "models"))
    parser.add_argument("--adapters-to", default=str(ROOT / "adapters" / "zoo" / "adapters"))
    args = parser.parse_args()
    staged = Path(args.staged).resolve()
    # the staged folder is searched first, so its codecs are found; bases live in the zoo proper;
    # only shipped adapters are rebound, not a user's own
    os.environ["TTFT_ADAPTER_PATH"] = ""
    os.environ["TTFT_ZOO_PATH"] = ":".join([str(staged), *filter(None, os.environ.get("TTFT_ZOO_PATH", "").split(":"))])
    from ttft_archive.ttft_core import TTFTError

    for codec_id in args.codecs:
        try:
            adapters = ship(staged, codec_id, Path(args.to), Path(args.adapters_to))
        except TTFTError as exc:
            sys.exit(f"ship_grown_codecs: {exc}")
        print(f"{codec_id}: shipped to {args.to}, with {len(adapters)} adapters: {', '.join(adapters) or 'none'}")


if __name__ == "__main__":
    main()
