"""Concurrency: ingests run at the same moment into one archive end complete and equal to the same
ingests run one after the other (or one refuses in one line), and never leave a profile whose
index disagrees with its tiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ttft_archive.adapters.archive import Archive, Profile
from ttft_archive.adapters.tile_records import pack_record
from ttft_archive.flows.jobs.tiles import listing, verify

from .common import FAST, bitstreams, cli, crop_raster, records, remove_tree_in_child, start_fork, state

TUNED = ("--codec", "hyperprior-small", "--ttft-steps", "1", "--tile", "64")  # TTFT seconds differ per run


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    return crop_raster(d / "scene.tif"), crop_raster(d / "other.tif", left=128)


def together(forks, *argvs) -> list[int]:
    """Start every command at once; their exit codes."""
    children = [start_fork(forks, argv) for argv in argvs]
    for child in children:
        child.join(300)
    return [child.exitcode for child in children]


def ended_well(codes: list[int], url) -> None:
    assert all(code in (0, 2) for code in codes) and 0 in codes, codes  # 2: a refusal in one line
    assert verify(str(url)) == []
    assert all(p["complete"] for item in listing(str(url)) for p in item["profiles"])


def test_two_ingests_of_the_same_item_at_once_end_as_one(tmp_path, forks, sources):
    scene = sources[0]
    alone = tmp_path / "alone.zarr"
    assert cli("ingest", scene, "--archive", alone, *TUNED)[0] == 0
    url = tmp_path / "a.zarr"
    codes = together(forks, *[["ingest", scene, "--archive", url, *TUNED]] * 2)
    # both complete, or (as seen on a loaded machine) one refuses in one line while the other does
    ended_well(codes, url)
    # tuned twice, a tile's two records differ in their TTFT seconds alone: the index holds the
    # record that stayed, and every bitstream is the one a single ingest makes
    assert bitstreams(records(str(url))) == bitstreams(records(str(alone)))


def test_two_items_into_one_new_archive_at_once_equal_two_in_turn(tmp_path, forks, sources):
    scene, other = sources
    in_turn = tmp_path / "in-turn.zarr"
    for source in (scene, other):
        assert cli("ingest", source, "--archive", in_turn, *FAST)[0] == 0
    url = tmp_path / "a.zarr"
    codes = together(forks, ["ingest", scene, "--archive", url, *FAST], ["ingest", other, "--archive", url, *FAST])
    assert codes == [0, 0]
    ended_well(codes, url)
    assert state(str(url)) == state(str(in_turn))
    assert Archive(str(url)).item_ids() == ["other", "scene"]


def test_two_removals_of_one_tree_at_once_both_end(tmp_path, forks):
    """What two completions of one profile do last, each removing the tile records: a local
    removal that loses entries to the other's starts again on what is left, and never fails."""
    url = tmp_path / "a.zarr"
    for attempt in range(4):
        for d in range(40):
            (url / "tiles" / "c" / str(d)).mkdir(parents=True)
            for f in range(50):
                (url / "tiles" / "c" / str(d) / str(f)).write_bytes(b"x")
        start = forks.Barrier(2)
        children = [forks.Process(target=remove_tree_in_child, args=(str(url), "tiles", start)) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0, 0], attempt
        assert not (url / "tiles").exists()


def overwrite(url, index, **changes) -> None:
    """Store tile ``index`` again as another writer would, its record changed by ``changes``
    (its key kept), without touching the profile's attributes."""
    profile = Archive(str(url)).profile("scene", "pixel")
    tile = replace(profile.record(index), **changes)
    profile.tiles[tuple(slice(i, i + 1) for i in index)] = np.array(pack_record(tile), dtype=object).reshape(1, 1, 1)


def test_a_tile_stored_by_another_writer_while_completing_is_in_the_index(tmp_path, sources, monkeypatch):
    """The interleaving two same-item ingests can produce, made certain: another writer stores a
    tile (same key, other TTFT seconds) after this one read the tiles for its shards. The tiles
    are read back after the marker, and shards and index made again."""
    url = tmp_path / "a.zarr"
    assert cli("ingest", sources[0], "--archive", url, *FAST)[0] == 0
    Archive(str(url)).profile("scene", "pixel").group.attrs.update({"complete": False, "index": None})
    write_shards, calls = Profile._write_shards, []

    def racing_write_shards(self):
        found = write_shards(self)
        calls.append(1)
        if len(calls) == 1:  # the other writer stores the tile again, after this read
            overwrite(url, (0, 0, 0), ttft_seconds=3.25)
        return found

    monkeypatch.setattr(Profile, "_write_shards", racing_write_shards)
    Archive(str(url)).profile("scene", "pixel").mark_complete()
    monkeypatch.undo()
    assert len(calls) == 2  # shards, read back (it differs), shards again, read back
    assert verify(str(url)) == []
    assert Archive(str(url)).profile("scene", "pixel").figures()["ttft_seconds"][0, 0, 0] == np.float32(3.25)


def test_a_stray_tile_record_beside_a_complete_profile_is_taken_in_by_the_next_ingest(tmp_path, sources):
    """What a race, or a removal of tile records cut short, can leave: a tile record beside the
    shards of a complete profile. Readers keep to the shards and the index; the next ingest
    takes the record into them (it is the newer) and removes it, coding nothing."""
    url = tmp_path / "a.zarr"
    assert cli("ingest", sources[0], "--archive", url, *FAST)[0] == 0
    overwrite(url, (0, 1, 1), ttft_seconds=7.0)
    profile = Archive(str(url)).profile("scene", "pixel")
    assert profile.complete and profile.figures()["ttft_seconds"][0, 1, 1] != np.float32(7.0)
    assert verify(str(url)) == []
    code, out, err = cli("ingest", sources[0], "--archive", url, *FAST)
    assert code == 0 and "0 written now" in out, err
    assert Archive(str(url)).profile("scene", "pixel").figures()["ttft_seconds"][0, 1, 1] == np.float32(7.0)
    assert verify(str(url)) == [] and not list(url.glob("items/scene/profiles/pixel/tiles"))
