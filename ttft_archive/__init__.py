"""ttft_archive: a task-aware learned-image-compression archive for satellite rasters and DICOM series.

The project's folders install under this one name (pyproject.toml maps them):
``ttft_archive.ttft_core`` (tensors and bytes: codecs, SVD-LoRA, TTFT, bitstreams, metrics),
``ttft_archive.adapters`` (files, Zarr archives, codec zoo, classical codecs),
``ttft_archive.configs`` (settings and presets) and ``ttft_archive.flows`` (the jobs, the Prefect
flows and the ``ttft`` command line)."""

import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ttft-archive")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Run from a source tree that was not installed (a checkout on PYTHONPATH, a copy on a training
# machine): the mapped folders sit beside this one. An installed copy holds them inside it.
_tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_tree, "ttft_core", "__init__.py")):
    __path__.append(_tree)
