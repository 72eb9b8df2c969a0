"""edge_ai.spool.store: durable Part-10 files in the spool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_ai.spool import store as store_mod
from edge_ai.spool.store import Spool, write_durably


def test_write_durably_stores_the_bytes(tmp_path: Path) -> None:
    """Bytes or chunks land complete at the target; the tmp folder is empty afterwards."""
    spool = Spool(tmp_path / "spool")
    target = spool.instance_path("1.2.3|abc")
    spool.write(target, [b"DICM", b"-", b"payload"])
    assert target.read_bytes() == b"DICM-payload"
    assert list(spool.tmp.iterdir()) == []
    spool.write(target, b"other")
    assert target.read_bytes() == b"other"


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_write_durably_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A failed write leaves neither a target file nor a tmp file behind."""
    spool = Spool(tmp_path / "spool")
    target = spool.instance_path("1.2.3|abc")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, failing, boom)
    with pytest.raises(OSError):
        spool.write(target, b"x" * 1000)
    monkeypatch.undo()
    assert not target.exists()
    assert list(spool.tmp.iterdir()) == []


def test_write_durably_without_tmp_dir_cleans_up(tmp_path: Path) -> None:
    """Writing over a directory fails cleanly: no stray tmp file next to it."""
    target = tmp_path / "out" / "x.dcm"
    target.mkdir(parents=True)
    with pytest.raises(OSError):
        write_durably(target, b"data")
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_spool_start_removes_unacknowledged_tmp_files(tmp_path: Path) -> None:
    """Leftovers of a crash mid-write were never acknowledged and are cleared at start."""
    spool = Spool(tmp_path / "spool")
    (spool.tmp / ".x.dcm.1.2.tmp").write_bytes(b"half")
    Spool(tmp_path / "spool")
    assert list(spool.tmp.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["1.2.840.113619.2.55.3|" + "a" * 64, "../../etc/passwd", "/abs/path", "..", "a/../../b", "x\x00y"]
)
def test_instance_path_has_no_uid_text_and_stays_in_spool(tmp_path: Path, key: str) -> None:
    """File names come from a hash: peer-chosen UIDs cannot show in or steer the path."""
    spool = Spool(tmp_path / "spool")
    for path in (spool.instance_path(key), spool.report_path(key)):
        assert ".." not in path.parts
        assert key not in str(path) and "1.2.840" not in str(path)
        resolved = path.resolve()
        assert resolved.is_relative_to(spool.root.resolve())
    assert spool.instance_path(key).parent.parent == spool.instances
    assert spool.instance_path(key) != spool.instance_path(key + "x")


def test_free_bytes_reports_the_disk(tmp_path: Path) -> None:
    """Free space is what the file system says (the C-STORE 0xA700 check relies on it)."""
    spool = Spool(tmp_path / "spool")
    st = os.statvfs(tmp_path)
    assert abs(spool.free_bytes() - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
