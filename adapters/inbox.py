"""An inbox: a folder or an s3:// prefix where new scenes and series arrive.

Each entry is a raster file (GeoTIFF) or a DICOM folder (every folder holding .dcm files is one
entry, its series found inside), with a fingerprint of what it holds now (names, sizes, times or
ETags), so that an entry is ingested once and again only when it changes. Entries still being
written (changed in the last ``settle`` seconds) wait for the next look.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec

from ttft_archive.ttft_core.errors import TTFTError

RASTER_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIX = ".dcm"


@dataclass(frozen=True)
class InboxEntry:
    source: str  # a raster's URL, or a DICOM folder's URL
    kind: str  # "raster" or "dicom"
    fingerprint: str


def scan_inbox(url: str, storage_options: dict | None = None, settle: float = 60.0) -> list[InboxEntry]:
    fs, root = _fs(url, storage_options)
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, OSError) as exc:
        raise TTFTError(f"inbox {url}: cannot list it ({exc})") from None
    rasters, dicom_dirs = [], defaultdict(list)
    for path, info in sorted(found.items()):
        name = path.lower()
        if name.endswith(RASTER_SUFFIXES):
            rasters.append((path, [_stamp(path, info)]))
        elif name.endswith(DICOM_SUFFIX):
            dicom_dirs[str(PurePosixPath(path).parent)].append(_stamp(path, info))
    newest_allowed = time.time() - settle
    entries = []
    for kind, groups in (("raster", rasters), ("dicom", sorted(dicom_dirs.items()))):
        for path, stamps in groups:
            if max(s["mtime"] for s in stamps) > newest_allowed:
                continue  # still arriving
            fingerprint = hashlib.sha256(json.dumps(stamps, sort_keys=True).encode()).hexdigest()
            entries.append(InboxEntry(_url(url, path), kind, fingerprint))
    return entries


def local_folder(
    entry: InboxEntry, storage_options: dict | None = None
) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A DICOM entry as a local folder pydicom can read: itself, or a temporary copy of a remote one."""
    if "://" not in entry.source or entry.source.startswith("file://"):
        return entry.source.removeprefix("file://"), None
    fs, root = _fs(entry.source, storage_options)
    tmp = tempfile.TemporaryDirectory(prefix="ttft-inbox-")
    for path in fs.find(root):
        if path.lower().endswith(DICOM_SUFFIX):
            fs.get(path, f"{tmp.name}/{PurePosixPath(path).name}")
    return tmp.name, tmp


def _fs(url: str, storage_options: dict | None):
    if "://" in url and not url.startswith("file://"):
        fs, root = fsspec.core.url_to_fs(url, **({"use_listings_cache": False} | (storage_options or {})))
    else:
        fs, root = fsspec.core.url_to_fs(url.removeprefix("file://"))
    return fs, root


def _stamp(path: str, info: dict) -> dict:
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return {
        "path": PurePosixPath(path).name,
        "size": int(info.get("size") or 0),
        "mtime": float(mtime),
        "etag": str(info.get("ETag", "")),
    }


def _url(inbox_url: str, path: str) -> str:
    if "://" in inbox_url and not inbox_url.startswith("file://"):
        return f"{inbox_url.split('://', 1)[0]}://{path}"
    return path
