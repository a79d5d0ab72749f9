"""A query of any item: the raster window or the DICOM slice range it asks for, written out, with
what came back (the command line and the query flow report the same)."""

from __future__ import annotations

from ttft_archive.adapters.archive import Archive
from ttft_archive.flows.jobs.dicom import query_dicom
from ttft_archive.flows.jobs.raster import query_raster


def query_item(
    archive_url: str,
    item: str,
    out: str,
    task: str = "pixel",
    bbox: tuple | None = None,
    crs: str | None = None,
    slices: str | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Decode ``item``'s profile ``task`` into ``out`` (a Cloud-Optimized GeoTIFF, or a folder of
    DICOM files; a local path, or an s3:// URL written locally and uploaded with
    ``storage_options``, the archive's): ``bbox`` (in ``crs``, by default the item's) picks a
    raster window, ``slices`` ('A:B') a range of a series. Returns what was written and the tiles
    decoded, with a one-line ``returned``."""
    archive = Archive(archive_url, storage_options, create=False)  # opened once: on S3, several requests
    kind = archive.item(item)["source"]["kind"]
    if kind == "dicom":
        result = query_dicom(archive, item, task=task, slices=slices, out=out, storage_options=storage_options)
        result.pop("arrays")
        first, stop = result["slices"]
        returned = f"{len(result['files'])} DICOM files (slices {first}:{stop}) in {out}"
    else:
        result = query_raster(archive, item, task=task, bbox=bbox, crs=crs, out=out, storage_options=storage_options)
        result.pop("array"), result.pop("valid")
        returned = f"Cloud-Optimized GeoTIFF {out} of shape {result['shape']} (window {result['window']})"
    return result | {"kind": kind, "returned": returned, "tiles_read": len(result["tiles_read"])}
