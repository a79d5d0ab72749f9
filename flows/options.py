"""What the command line and the flows read the same way: storage options from the environment,
and a terminal progress bar."""

from __future__ import annotations

import json
import os
import sys

from tqdm import tqdm

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


class ProgressBar:
    """Tiles done of a total, with their rate and the time left (tqdm), on stderr and only on a
    terminal. Called with (done, total) as the jobs report."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bar = label, enabled and sys.stderr.isatty(), None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="tile", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
