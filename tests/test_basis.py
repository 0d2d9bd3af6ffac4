"""Choosing a basis for new files (library_syncer.basis): the heuristics on real files, and that a
seeded hard link never lets a write reach the published file."""

from __future__ import annotations

import os
from pathlib import Path

from library_syncer.sync import basis
from library_syncer.sync.basis import Candidate, Listed

MB = 1 << 20


def _file(root: Path, rel: str, size: int, fill: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fill * size)
    return path


def test_parse_listing_reads_itemized_lines_of_files_only():
    lines = [".d..t...... 4096 ./", "cd+++++++++ 4096 new-item/",
             "hf          3 a/small.txt", ">f+++++++++ 3000000 new-item/disk 1.vmdk",
             ">f.st...... 12 a/changed.ovf", "*deleting   0 b/old.vmdk",
             "Number of files: 4 (reg: 2, dir: 2)", "cL+++++++++ 0 a/link -> x"]
    assert basis.parse_listing(lines) == [
        Listed("a/small.txt", 3, new=False),
        Listed("new-item/disk 1.vmdk", 3_000_000, new=True, fetched=True),
        Listed("a/changed.ovf", 12, new=False, fetched=True),
    ]


def test_monthly_version_as_a_new_item_gets_last_months_disk(tmp_path):
    pub = tmp_path / "pub"
    _file(pub, "ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk1.vmdk", 4 * MB)
    _file(pub, "ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk2.vmdk", 2 * MB)
    _file(pub, "windows-2022-2026-11/windows-2022-2026-11-disk1.vmdk", 4 * MB)
    _file(pub, "tools/tools.iso", 4 * MB)
    listing = [
        Listed("ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk1.vmdk", 4 * MB, False),
        Listed("ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk2.vmdk", 2 * MB, False),
        Listed("windows-2022-2026-11/windows-2022-2026-11-disk1.vmdk", 4 * MB, False),
        Listed("tools/tools.iso", 4 * MB, False),
        Listed("ubuntu-22.04-2026-12/ubuntu-22.04-2026-12-disk1.vmdk", 4 * MB + 4096, True),
        Listed("ubuntu-22.04-2026-12/ubuntu-22.04-2026-12-disk2.vmdk", 2 * MB, True),
        Listed("ubuntu-22.04-2026-12/ubuntu-22.04-2026-12.ovf", 9000, True),
    ]
    pool = basis.candidates(pub, None, {f.path for f in listing})
    chosen = basis.choose([f for f in listing if f.new], listing, pool)
    assert {k: v.rel for k, v in chosen.items()} == {
        "ubuntu-22.04-2026-12/ubuntu-22.04-2026-12-disk1.vmdk":
            "ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk1.vmdk",
        "ubuntu-22.04-2026-12/ubuntu-22.04-2026-12-disk2.vmdk":
            "ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk2.vmdk",
    }  # the .ovf is below MIN_SIZE: fetched whole (it is small)


def test_renamed_folder_gets_its_own_files_back(tmp_path):
    pub = tmp_path / "pub"
    _file(pub, "centos-old/centos-disk1.vmdk", 3 * MB)
    _file(pub, "centos-old/centos-disk2.vmdk", 3 * MB)
    listing = [Listed("centos-7/centos-disk1.vmdk", 3 * MB, True),
               Listed("centos-7/centos-disk2.vmdk", 3 * MB, True)]
    pool = basis.candidates(pub, None, {f.path for f in listing})
    assert all(c.gone for c in pool)
    chosen = basis.choose(listing, listing, pool)
    assert {k: v.rel for k, v in chosen.items()} == {
        "centos-7/centos-disk1.vmdk": "centos-old/centos-disk1.vmdk",
        "centos-7/centos-disk2.vmdk": "centos-old/centos-disk2.vmdk"}


def test_no_guess_across_kinds_or_far_sizes(tmp_path):
    pub = tmp_path / "pub"
    _file(pub, "a/a.iso", 4 * MB)
    _file(pub, "b/b.vmdk", 1 * MB)
    listing = [Listed("c/c.vmdk", 8 * MB, True), Listed("a/a.iso", 4 * MB, False),
               Listed("b/b.vmdk", 1 * MB, False)]
    pool = basis.candidates(pub, None, {f.path for f in listing})
    assert basis.choose(listing, listing, pool) == {}  # .iso is another kind; 1/8 too small


def test_ova_store_archives_are_candidates(tmp_path):
    store = tmp_path / "ova"
    _file(store, "photon/photon-5.0-r1.ova", 2 * MB)
    listing = [Listed("photon-r2/photon-5.0-r2.ova", 2 * MB + 10, True)]
    pool = basis.candidates(None, store, {f.path for f in listing})
    chosen = basis.choose(listing, listing, pool)
    assert chosen["photon-r2/photon-5.0-r2.ova"].path == store / "photon/photon-5.0-r1.ova"


def test_manifests_and_hidden_files_are_never_candidates(tmp_path):
    pub = tmp_path / "pub"
    _file(pub, "items.json", 2 * MB)
    _file(pub, ".state/x.vmdk", 2 * MB)
    _file(pub, "a/item.json", 2 * MB)
    assert basis.candidates(pub, None, set()) == []


def test_seed_links_into_staging_and_skips_unsafe_names(tmp_path):
    pub, staging = tmp_path / "pub", tmp_path / "staging"
    old = _file(pub, "a/a.vmdk", 2 * MB)
    staging.mkdir()
    (staging / "evil").symlink_to(tmp_path)
    cand = Candidate("a/a.vmdk", old, 2 * MB)
    seeded = basis.seed(staging, {"b/b.vmdk": cand, "../x.vmdk": cand, "/abs.vmdk": cand,
                                  "evil/c.vmdk": cand})
    assert seeded == ["b/b.vmdk"]
    assert (staging / "b/b.vmdk").stat().st_ino == old.stat().st_ino
    assert oct((staging / "b").stat().st_mode & 0o777) == "0o755"
    assert not (tmp_path / "c.vmdk").exists() and not (tmp_path / "x.vmdk").exists()
    assert sorted(os.listdir(staging)) == ["b", "evil"]


def test_two_renamed_items_with_same_named_disks_each_get_their_own(tmp_path):
    """Found by the benchmark: both new disks took whichever old one os.walk met first."""
    pub = tmp_path / "pub"
    for name, fill in (("beta", b"b"), ("alpha", b"a")):
        _file(pub, f"{name}/disk1.vmdk", 2 * MB, fill)
    new = [Listed("alpha-2027/disk1.vmdk", 2 * MB, True),
           Listed("beta-2027/disk1.vmdk", 2 * MB, True)]
    pool = basis.candidates(pub, None, {f.path for f in new})
    for order in (pool, list(reversed(pool))):
        chosen = basis.choose(new, new, order)
        assert {k: v.rel for k, v in chosen.items()} == {
            "alpha-2027/disk1.vmdk": "alpha/disk1.vmdk",
            "beta-2027/disk1.vmdk": "beta/disk1.vmdk"}


def test_a_file_with_only_taken_candidates_still_shares_one(tmp_path):
    pub = tmp_path / "pub"
    _file(pub, "tmpl-r1/tmpl-r1.vmdk", 2 * MB)
    new = [Listed("tmpl-r2/tmpl-r2.vmdk", 2 * MB, True),
           Listed("tmpl-r3/tmpl-r3.vmdk", 2 * MB, True)]
    pool = basis.candidates(pub, None, {f.path for f in new})
    chosen = basis.choose(new, new, pool)
    assert sorted(chosen) == ["tmpl-r2/tmpl-r2.vmdk", "tmpl-r3/tmpl-r3.vmdk"]
    assert {v.rel for v in chosen.values()} == {"tmpl-r1/tmpl-r1.vmdk"}


def test_no_guess_for_an_unrelated_template(tmp_path):
    """Same kind and size but another product: a guess would cost the server a futile scan."""
    pub = tmp_path / "pub"
    _file(pub, "ubuntu-22.04-2026-11/ubuntu-22.04-2026-11-disk1.vmdk", 4 * MB)
    new = [Listed("windows-2022-2026-11/windows-2022-2026-11-disk1.vmdk", 4 * MB, True)]
    pool = basis.candidates(pub, None, {f.path for f in new})
    assert basis.choose(new, new, pool) == {}
