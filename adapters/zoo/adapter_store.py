"""The stage-1 adapter store: ``<codec>--<task>.safetensors`` files, each carrying its card in the
file's metadata (adapters.adapter_files). Shipped adapters live in ``adapters/zoo/adapters``; the
folders of ``TTFT_ADAPTER_PATH`` (colon-separated; default ``~/.local/share/ttft/adapters``) are
searched first, so a user's own training of an id is the one new profiles use, and the first of
them is where ``ttft train-adapter`` writes by default. A decoder asks for an id and the sha256
the archive recorded, and gets whichever file of that id has exactly those tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ttft_archive.ttft_core.digest import tensors_digest
from ttft_archive.ttft_core.errors import TTFTError

from ..adapter_files import load_adapter

SHIPPED_ADAPTERS = Path(__file__).parent / "adapters"
DEFAULT_USER_FOLDER = Path("~/.local/share/ttft/adapters")
SEPARATOR = "--"


def adapter_id(codec_id: str, task: str) -> str:
    return f"{codec_id}{SEPARATOR}{task}"


def user_folders() -> list[Path]:
    raw = os.environ.get("TTFT_ADAPTER_PATH")
    folders = [Path(p) for p in raw.split(":") if p] if raw is not None else [DEFAULT_USER_FOLDER]
    return [f.expanduser() for f in folders]


def store_folders() -> list[Path]:
    return [*user_folders(), SHIPPED_ADAPTERS]


def default_output_folder() -> Path:
    folders = user_folders()
    if not folders:
        raise TTFTError("TTFT_ADAPTER_PATH names no folder: give train-adapter an --out folder")
    return folders[0]


@dataclass(frozen=True)
class AdapterEntry:
    adapter_id: str
    path: Path
    loaded: tuple[dict[str, Tensor], dict] | None = field(default=None, compare=False, repr=False)

    def load(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, card): as read when the entry was found by its sha256, else from the file."""
        return self.loaded if self.loaded is not None else load_adapter(self.path)


def find_adapter(adapter_id_: str, sha256: str | None = None) -> AdapterEntry | None:
    """The first store folder holding the id, or with ``sha256`` the first whose tensors have it
    (the entry then keeps what was read, so the file is read once)."""
    for folder in store_folders():
        path = folder / f"{adapter_id_}.safetensors"
        if not path.is_file():
            continue
        if sha256 is None:
            return AdapterEntry(adapter_id_, path)
        loaded = load_adapter(path)
        if tensors_digest(loaded[0]).hex() == sha256:
            return AdapterEntry(adapter_id_, path, loaded)
    return None


def require_adapter(adapter_id_: str, sha256: str | None = None) -> AdapterEntry:
    entry = find_adapter(adapter_id_, sha256)
    if entry is None:
        where = ", ".join(str(f) for f in store_folders())
        if sha256 and find_adapter(adapter_id_):
            raise TTFTError(
                f"stage-1 adapter {adapter_id_!r} here is not the one (sha256 {sha256[:12]}) "
                f"the archive was written with ({where})"
            )
        raise TTFTError(f"no stage-1 adapter {adapter_id_!r} in the adapter store ({where})")
    return entry


def list_adapters() -> list[tuple[AdapterEntry, dict]]:
    """Every adapter in the store with its card; an id found twice is listed where it is used."""
    seen, out = set(), []
    for folder in store_folders():
        for path in sorted(folder.glob(f"*{SEPARATOR}*.safetensors")) if folder.is_dir() else []:
            if path.stem not in seen:
                seen.add(path.stem)
                out.append((AdapterEntry(path.stem, path), load_adapter(path)[1]))
    return out
