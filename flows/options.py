"""Options the command line and the flows read the same way: storage options from the environment,
band groups from text, and a terminal progress bar."""

from __future__ import annotations

import json
import os
import sys

from ttft_archive.ttft_core.errors import TTFTError


def storage_options_from_env() -> dict | None:
    """fsspec options for s3:// archives, as JSON in TTFT_STORAGE_OPTIONS (credentials usually come
    from the standard AWS variables instead, and never belong in flow parameters the UI shows)."""
    raw = os.environ.get("TTFT_STORAGE_OPTIONS")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TTFTError(f"TTFT_STORAGE_OPTIONS is not JSON ({exc})") from None


def parse_band_groups(text: str | None) -> list[list[int]] | None:
    """'1,2,3;4' -> [[1, 2, 3], [4]]"""
    if not text:
        return None
    try:
        return [[int(b) for b in group.split(",")] for group in text.split(";")]
    except ValueError:
        raise TTFTError(f"--bands {text!r}: expected groups of 1-based band numbers, e.g. 1,2,3;4") from None


def parse_band_names(text: str | None) -> dict[str, int] | None:
    """'red=1,green=2,blue=3,nir=4' -> {'red': 1, ...}"""
    if not text:
        return None
    try:
        return {name.strip(): int(band) for name, band in (pair.split("=") for pair in text.split(","))}
    except ValueError:
        raise TTFTError(f"--band-names {text!r}: expected name=band pairs, e.g. red=1,green=2,blue=3,nir=4") from None


class ProgressBar:
    """A one-line bar on stderr, drawn only on a terminal."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled = label, enabled and sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            filled = int(30 * done / total)
            print(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)
