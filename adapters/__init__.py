"""adapters: files, archives, codec and adapter stores, and the classical codecs we measure against."""

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"  # the bundled excerpts (their sources: samples/README.md)
