"""The offline OSV database: indexing all.zip files and plain records, the shared cache, and
hostile input (truncated or corrupt zips, a 100 MB record, wrong types, non-JSON members)."""

import json
import os
import threading
import tracemalloc
import zipfile

import pytest
from osvkit import affected, record, write_json, write_zip

from guestkit_worker.vulns import osvdb


@pytest.fixture(autouse=True)
def _fresh_cache():
    osvdb.clear_cache()
    yield
    osvdb.clear_cache()


def _debian(rid, name="openssl", eco="Debian:12", **kw):
    return record(rid, affected(eco, name, [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]), **kw)


def test_zip_and_json_records_are_indexed_per_exact_ecosystem(tmp_path):
    write_zip(tmp_path, "Debian", [_debian("DSA-1"), _debian("DSA-2", eco="Debian:11"),
                                   _debian("DSA-3", modified="2026-12-03T00:00:00Z")])
    alpine = record("ALPINE-1", affected("Alpine:v3.19", "openssl", [{"introduced": "0"}]))
    write_json(tmp_path / "extra", alpine)
    db = osvdb.load_database(str(tmp_path))
    assert db.records == 4 and db.skipped == 0
    assert db.by_ecosystem == {"Alpine:v3.19": 1, "Debian:11": 1, "Debian:12": 2}
    assert [a.record.id for a in db.candidates("Debian:12", "openssl")] == ["DSA-1", "DSA-3"]
    assert [a.record.id for a in db.candidates("Debian:11", "openssl")] == ["DSA-2"]
    assert db.candidates("Debian", "openssl") == []
    info = db.info(now=osvdb.parse_timestamp("2026-12-05T00:00:00Z"))
    assert info["newest_modified"] == "2026-12-03T00:00:00Z"
    assert info["age_seconds"] == 2 * 86400


def test_withdrawn_records_are_counted_not_indexed(tmp_path):
    write_zip(tmp_path, "Debian", [_debian("DSA-1"), _debian("DSA-2", withdrawn="2026-11-01T00:00:00Z")])
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.withdrawn) == (1, 1)
    assert [a.record.id for a in db.candidates("Debian:12", "openssl")] == ["DSA-1"]


@pytest.mark.parametrize("path, words", [
    (None, "--vuln-db is not set; set --vuln-db DIR"),
    ("/nonexistent/osv", "--vuln-db /nonexistent/osv is not a directory"),
])
def test_unavailable_names_the_flag(path, words):
    with pytest.raises(osvdb.ScanError) as err:
        osvdb.shared_database(path)
    assert err.value.code == "VULN_DB_UNAVAILABLE"
    assert words in err.value.message and "\n" not in err.value.message


def test_empty_directory_is_unavailable(tmp_path):
    with pytest.raises(osvdb.ScanError) as err:
        osvdb.load_database(str(tmp_path))
    assert err.value.code == "VULN_DB_UNAVAILABLE"
    assert "holds no all.zip or *.json files" in err.value.message


def test_scan_error_is_a_handler_error():
    from guestkit_worker.job.errors import HandlerError
    err = osvdb.ScanError("VULN_DB_STALE", "old")
    assert isinstance(err, HandlerError) and err.code == "VULN_DB_STALE" and not err.recoverable


def test_truncated_zip_is_skipped_and_others_load(tmp_path):
    bad = write_zip(tmp_path, "Alpine", [_debian(f"A-{i}", eco="Alpine:v3.19") for i in range(50)])
    with open(bad, "r+b") as fh:
        fh.truncate(os.path.getsize(bad) // 2)
    write_zip(tmp_path, "Debian", [_debian("DSA-1")])
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped_files) == (1, 1)
    assert "not a readable zip" in db.warnings[0] and "Alpine/all.zip" in db.warnings[0]


def test_only_corrupt_zips_is_unavailable_with_counts(tmp_path):
    os.makedirs(tmp_path / "Debian")
    (tmp_path / "Debian" / "all.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(osvdb.ScanError) as err:
        osvdb.load_database(str(tmp_path))
    assert err.value.code == "VULN_DB_UNAVAILABLE"
    assert "no readable OSV record (0 records and 1 files skipped)" in err.value.message


def test_corrupt_member_is_skipped(tmp_path):
    path = write_zip(tmp_path, "Debian", [_debian("DSA-1"), _debian("DSA-2")])
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("DSA-1.json")
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    for i in range(start + 5, start + 25):  # garble the deflated bytes of DSA-1 only
        data[i] ^= 0x5A
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped) == (1, 1)
    assert "DSA-1.json: cannot be decompressed" in db.warnings[0]


def test_hundred_megabyte_record_is_skipped_without_loading_it(tmp_path):
    huge = json.dumps(_debian("DSA-HUGE", summary="x" * (100 * 1024 * 1024)))
    write_zip(tmp_path, "Debian", [_debian("DSA-1")], extra_members=[("DSA-HUGE.json", huge)])
    del huge
    tracemalloc.start()
    try:
        db = osvdb.load_database(str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (db.records, db.skipped) == (1, 1)
    assert "DSA-HUGE.json: 104857" in db.warnings[0] and "more than the 8388608" in db.warnings[0]
    assert peak < 20 * 1024 * 1024, f"indexing peaked at {peak} bytes"


def test_hundred_megabyte_json_file_is_skipped(tmp_path):
    with open(tmp_path / "big.json", "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB of NULs
    write_json(tmp_path, _debian("DSA-1"))
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped) == (1, 1)
    assert "big.json: 104857600 bytes" in db.warnings[0]


@pytest.mark.parametrize("doc, reason", [
    ([1, 2], "the record is a JSON list"),
    ({"id": 7, "modified": "2026-12-01T00:00:00Z"}, "id is missing or not a string"),
    ({"id": "X-1", "modified": 20261201}, "modified is not an RFC 3339 timestamp"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z", "affected": {"a": 1}}, "affected is dict, not list"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z", "aliases": "CVE-1"}, "aliases is str, not list"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z", "affected": [{"package": {"name": 3}}]},
     "no string ecosystem and name"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z",
      "affected": [affected("Debian:12", "a", [{"fixed": 3}])]}, "'fixed': int"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z",
      "affected": [affected("Debian:12", "a", versions=[1, 2])]}, "versions holds a value that is not"),
    ({"id": "X-1", "modified": "2026-12-01T00:00:00Z", "severity": [{"type": "CVSS_V3", "score": 9.8}]},
     "severity[] entry is not"),
])
def test_records_of_wrong_types_are_skipped_with_the_reason(tmp_path, doc, reason):
    write_zip(tmp_path, "Debian", [_debian("DSA-1")], extra_members=[("BAD.json", json.dumps(doc))])
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped) == (1, 1)
    assert reason in db.warnings[0], db.warnings


def test_non_json_members_are_skipped(tmp_path):
    members = [("README.txt", b"not json"), ("bin.json", b"\xff\xfe\x00garbage"),
               ("deep.json", b"[" * 100000 + b"]" * 100000)]
    write_zip(tmp_path, "Debian", [_debian("DSA-1")], extra_members=members)
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped) == (1, 3)
    assert all("not a JSON record" in w for w in db.warnings)


def test_shared_database_is_reindexed_when_files_change(tmp_path):
    write_zip(tmp_path, "Debian", [_debian("DSA-1")])
    first = osvdb.shared_database(str(tmp_path))
    assert osvdb.shared_database(str(tmp_path)) is first
    write_zip(tmp_path, "Debian", [_debian("DSA-1"), _debian("DSA-2")])
    os.utime(tmp_path / "Debian" / "all.zip", ns=(1, 1))  # a new mtime even on a coarse clock
    second = osvdb.shared_database(str(tmp_path))
    assert second is not first and second.records == 2
    write_json(tmp_path, _debian("DSA-3"))
    assert osvdb.shared_database(str(tmp_path)).records == 3


def test_concurrent_callers_share_one_index(tmp_path, monkeypatch):
    write_zip(tmp_path, "Debian", [_debian(f"DSA-{i}") for i in range(2000)])
    loads = []
    real = osvdb.load_database
    monkeypatch.setattr(osvdb, "load_database", lambda path: loads.append(path) or real(path))
    results = []
    threads = [threading.Thread(target=lambda: results.append(osvdb.shared_database(str(tmp_path))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 8 and len({id(r) for r in results}) == 1
    assert len(loads) == 1 and results[0].records == 2000


def test_zip_declaring_too_many_members_is_skipped_unread(tmp_path, monkeypatch):
    write_zip(tmp_path / "a", "Debian", [_debian(f"DSA-{i}") for i in range(11)])
    write_zip(tmp_path / "b", "Debian", [_debian("DSA-1")])
    monkeypatch.setattr(osvdb, "MAX_ZIP_MEMBERS", 10)
    opened = []
    real = zipfile.ZipFile
    monkeypatch.setattr(osvdb.zipfile, "ZipFile", lambda path, *a: opened.append(path) or real(path, *a))
    db = osvdb.load_database(str(tmp_path))
    assert (db.records, db.skipped_files) == (1, 1)
    assert "declares 11 members, more than the 10 a database zip may have" in db.warnings[0]
    assert len(opened) == 1 and "/b/" in str(opened[0])


def test_member_count_of_a_zip64_archive(tmp_path):
    """More than 65,535 members (as OSV's Debian dump has) are counted from the zip64 end record."""
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(70000):
            archive.writestr(f"{i}.json", b"")
    assert osvdb.declared_members(str(path)) == 70000
    small = write_zip(tmp_path, "Debian", [_debian("DSA-1"), _debian("DSA-2")])
    assert osvdb.declared_members(small) == 2
    (tmp_path / "junk.zip").write_bytes(b"no end record here")
    assert osvdb.declared_members(str(tmp_path / "junk.zip")) is None


def test_skip_reasons_escape_control_characters(tmp_path):
    """Member names and ids reach logs and terminals: escape sequences and newlines are escaped."""
    bad_id = json.dumps({"id": "X\x1b[31m\nFAKE", "modified": 7})
    write_zip(tmp_path, "Debian", [_debian("DSA-1")],
              extra_members=[("evil\x1b[2J\nline.json", b"not json"), ("id.json", bad_id)])
    db = osvdb.load_database(str(tmp_path))
    assert db.skipped == 2
    for warning in db.warnings:
        assert warning.isprintable(), warning
    assert any("evil\\x1b[2J\\nline.json" in w for w in db.warnings)
    assert any("X\\x1b[31m\\nFAKE: modified is not an RFC 3339 timestamp" in w for w in db.warnings)


def test_the_refresher_warms_the_scanning_libraries_after_indexing(tmp_path):
    """The worker's refresher does the scan's first-use work when it indexes (python-debian's and
    cvss's first use, each distinct CVSS vector of the database scored), so the first job's scan
    costs what later ones do."""
    from osvkit import CVSS_HIGH, CVSS_LOW

    from guestkit_worker.runtime.vulnwatch import DatabaseRefresher
    from guestkit_worker.vulns import severity
    entry = affected("Debian:12", "warm", [{"introduced": "0"}],
                     severity=[{"type": "CVSS_V3", "score": CVSS_LOW}])
    write_zip(tmp_path, "Debian", [record("DSA-WARM", entry, severity=CVSS_HIGH)])
    osvdb.clear_cache()
    severity.rating_from_vector.cache_clear()
    DatabaseRefresher(str(tmp_path)).refresh()
    before = severity.rating_from_vector.cache_info()
    assert [severity.rating_from_vector("CVSS_V3", v) for v in (CVSS_HIGH, CVSS_LOW)] == ["high", "low"]
    after = severity.rating_from_vector.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)
