"""Codec checkpoints on disk: safetensors weights beside a JSON card, found by `ttft codecs`.

A card names its backbone configuration, family, rate point and how it was trained. Weights are
only ever read with safetensors (no pickles). Shipped codecs live in ``adapters/zoo/models``;
``TTFT_ZOO_PATH`` (colon-separated folders) adds more, searched first: a codec there takes the
place of a shipped one of the same id (archives name the weights' sha256, so a tile is never
decoded with other weights than it was coded with).

A codec grown from another and trained only in what it adds (a checkerboard context on a
hyperprior's frozen weights) may be stored as just those added tensors: its card's ``grown_from``
names the codec it grew from and that codec's file sha256, and loading it loads that codec first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ttft_archive.ttft_core import BackboneConfig, build
from ttft_archive.ttft_core.backbones import MeanScaleCodec, grow_from_hyperprior
from ttft_archive.ttft_core.errors import TTFTError

from ..atomic import write_bytes_atomic

SHIPPED = Path(__file__).parent / "models"


@dataclass(frozen=True)
class CodecEntry:
    codec_id: str
    card: dict
    weights: Path

    @property
    def config(self) -> BackboneConfig:
        return BackboneConfig.from_dict(self.card["backbone"])


def zoo_folders() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("TTFT_ZOO_PATH", "").split(":") if p]
    return [*extra, SHIPPED]


def list_codecs() -> list[CodecEntry]:
    """Every codec by id, the first folder of ``zoo_folders`` that holds an id giving it."""
    entries: dict[str, CodecEntry] = {}
    for folder in zoo_folders():
        for card_path in sorted(folder.glob("*.json")):
            weights = card_path.with_suffix(".safetensors")
            if weights.exists():
                card = json.loads(card_path.read_text())
                entries.setdefault(card["id"], CodecEntry(card["id"], card, weights))
    return list(entries.values())


def find_codec(codec_id: str) -> CodecEntry:
    for entry in list_codecs():
        if entry.codec_id == codec_id:
            return entry
    known = ", ".join(e.codec_id for e in list_codecs()) or "none shipped yet"
    raise TTFTError(f"unknown codec {codec_id!r}; known: {known}")


def load_codec(entry: CodecEntry) -> MeanScaleCodec:
    """Build the architecture from the card and load its weights, checking the file's sha256 (and,
    for a grown codec, the sha256 of the codec it grew from)."""
    data = entry.weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.card.get("sha256"):
        raise TTFTError(
            f"{entry.weights}: sha256 {digest[:12]} does not match its card ({entry.card.get('sha256', '')[:12]})"
        )
    model = build(entry.config)
    grown_from = entry.card.get("grown_from")
    if grown_from is None:
        model.load_state_dict(load_safetensors(data))
        return model.eval()
    grow_from_hyperprior(model, load_codec(_grown_base(entry.codec_id, grown_from)))
    added = load_safetensors(data)
    missing, unexpected = model.load_state_dict(added, strict=False)
    if unexpected or set(missing) & _added_names(model):
        raise TTFTError(f"{entry.weights}: not the tensors its codec adds to {grown_from['id']!r}")
    return model.eval()


def _grown_base(codec_id: str, grown_from: dict) -> CodecEntry:
    base = find_codec(grown_from["id"])
    if base.card.get("sha256") != grown_from.get("sha256"):
        raise TTFTError(
            f"codec {codec_id!r} grew from {grown_from['id']!r} with sha256 {str(grown_from.get('sha256'))[:12]}; "
            f"the zoo's {grown_from['id']!r} is {str(base.card.get('sha256'))[:12]} ({base.weights})"
        )
    return base


def _added_names(model: MeanScaleCodec) -> set[str]:
    """The tensors a grown codec has beyond the codec it grew from (its context)."""
    return {k for k in model.state_dict() if k.startswith("context.")}


def save_codec(
    folder: str | Path, codec_id: str, model: MeanScaleCodec, card: dict, grown_from: CodecEntry | None = None
) -> Path:
    """Write weights, then the card that makes them visible: a crash leaves no card without weights.

    With ``grown_from`` only the tensors ``model`` adds to that codec are written, after checking
    that every other tensor is still exactly that codec's."""
    model.update(force=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # what this function writes wins over a card copied from another codec (its id, its grown_from)
    card = {k: v for k, v in card.items() if k not in ("id", "backbone", "sha256", "grown_from")}
    if grown_from is not None:
        state = _added_state(state, model, grown_from)
        card = {**card, "grown_from": {"id": grown_from.codec_id, "sha256": grown_from.card["sha256"]}}
    data = save_safetensors(state, metadata={"codec_id": codec_id})
    folder = Path(folder)
    write_bytes_atomic(folder / f"{codec_id}.safetensors", data)
    full_card = {"id": codec_id, "backbone": model.config.to_dict(), **card, "sha256": hashlib.sha256(data).hexdigest()}
    write_bytes_atomic(folder / f"{codec_id}.json", json.dumps(full_card, indent=2).encode())
    return folder / f"{codec_id}.json"


def _added_state(state: dict, model: MeanScaleCodec, grown_from: CodecEntry) -> dict:
    base = load_codec(grown_from).state_dict()
    added = _added_names(model)
    changed = [k for k, v in state.items() if k not in added and not (k in base and torch.equal(base[k], v))]
    if changed:
        raise TTFTError(
            f"{len(changed)} tensors (first {changed[0]!r}) differ from {grown_from.codec_id!r}: "
            "only a codec trained in what it adds is stored as those tensors"
        )
    return {k: state[k] for k in sorted(added)}


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint: plain tensors and numbers only (weights_only refuses anything else),
    on the CPU whichever device wrote it (training moves them where it runs)."""
    return torch.load(io.BytesIO(path.read_bytes()), weights_only=True, map_location="cpu")


DEFAULT_BACKBONE = "hyperprior"


def family_rate_points(family: str, backbone: str = DEFAULT_BACKBONE) -> list[CodecEntry]:
    """A family's codecs of one backbone, from the lowest rate to the highest (larger lambda). A
    family may ship in several backbones, each with its own rate points."""
    return sorted(
        (e for e in list_codecs() if e.card.get("family") == family and e.config.backbone == backbone),
        key=lambda e: e.card["lambda"],
    )


def shipped_backbone(family: str, backbone: str) -> str:
    """``backbone`` where the family ships codecs of it, else the default backbone: the setting is
    one preference for every family, and not every family ships every backbone."""
    return backbone if family_rate_points(family, backbone) else DEFAULT_BACKBONE


def quality_of(codec_id: str) -> str | None:
    """A codec's quality as its id says: the N of ``...-qN`` (the rgb family numbers its rate points
    as CompressAI numbers its lambdas, 3 at 0.0067; ``q0`` and ``q00`` lie below 1)."""
    found = re.search(r"-q(\d+)$", codec_id)
    return found.group(1) if found else None


def codec_for_quality(family: str, quality: str | int, backbone: str = DEFAULT_BACKBONE) -> str:
    """The family's codec of this backbone whose id ends in ``-q<quality>``."""
    points = family_rate_points(family, backbone)
    if not points:
        raise TTFTError(f"no shipped {backbone} codec of family {family!r}")
    chosen = [e.codec_id for e in points if quality_of(e.codec_id) == str(quality)]
    if not chosen:
        known = ", ".join(q for q in (quality_of(e.codec_id) for e in points) if q is not None) or "none"
        raise TTFTError(
            f"quality {quality}: family {family!r} ({backbone}) has qualities {known} (the qN of its codec ids)"
        )
    return chosen[0]


def default_codec_id(family: str = "rgb", backbone: str = DEFAULT_BACKBONE) -> str | None:
    """The highest-rate shipped codec of a family (the one that shows the codec at its best), not
    counting points whose card says ``opt_in``: those (gray16 q5 and q6, CT at 5:1 to 8:1) code at
    several times the default's bytes, and an archive made before they shipped must keep its default."""
    points = [e for e in family_rate_points(family, backbone) if not e.card.get("opt_in")]
    return points[-1].codec_id if points else None


def open_codec(name: str, channels: int = 3) -> tuple[MeanScaleCodec, str, dict | None]:
    """A shipped codec by id, or an untrained backbone size (seeded, so both sides agree).

    Returns (model, codec id, card); the card is None for an untrained backbone."""
    from ttft_archive.ttft_core.backbones import PRESETS, preset

    if name in PRESETS:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build(preset(name, channels))
        return model.eval(), f"untrained-{name}-c{channels}", None
    entry = find_codec(name)
    return load_codec(entry), name, entry.card


def describe_codec(name: str, channels: int = 3) -> tuple[str, dict | None, int]:
    """(codec id, card, channels it codes) of what ``open_codec`` would open, without loading
    weights or building the model: what planning needs."""
    from ttft_archive.ttft_core.backbones import PRESETS

    if name in PRESETS:
        return f"untrained-{name}-c{channels}", None, channels
    entry = find_codec(name)
    return name, entry.card, int(entry.card["backbone"]["channels"])


def open_codec_by_id(codec_id: str) -> MeanScaleCodec:
    """The codec a bitstream or archive names: a shipped id, or ``untrained-<size>-c<channels>``."""
    m = re.fullmatch(r"untrained-(.+)-c(\d+)", codec_id)
    if m:
        return open_codec(m.group(1), channels=int(m.group(2)))[0]
    return load_codec(find_codec(codec_id))
