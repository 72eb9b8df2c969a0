"""Ingest with default limits takes an ordinary large Enhanced CT, and still refuses an absurd one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from node_state import State
from pydicom.uid import EnhancedCTImageStorage

from edge_ai import phantoms
from edge_ai.config import Storage
from edge_ai.errors import Refusal, RejectedInstance
from edge_ai.spool.ingest import DEFAULT_MAX_INSTANCE_BYTES, Ingest, Stored, dataset_offset

FRAMES_1000 = 1000 * 512 * 512 * 2  # 524 MB decoded


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    state = State(tmp_path)
    yield state.ingest
    state.close()


def _receive(ingest: Ingest, path: Path) -> Stored:
    with path.open("rb") as f:
        head = f.read(1 << 16)
        start = dataset_offset(head)
        receiving = ingest.receive(head[:start], EnhancedCTImageStorage, "assoc-1")
        f.seek(start)
        while chunk := f.read(1 << 20):
            receiving.write(memoryview(chunk))
    return receiving.finish()


def test_config_and_ingest_defaults_hold_a_1000_frame_ct() -> None:
    """Out of the box the node's limit (storage.max_instance_bytes) is above a 1000-frame 512 x 512 CT."""
    assert Storage().max_instance_bytes == DEFAULT_MAX_INSTANCE_BYTES >= FRAMES_1000


def test_1000_frame_512_enhanced_ct_is_stored_with_default_limits(ingest: Ingest, tmp_path: Path) -> None:
    """An ordinary 1000-frame 512 x 512 16-bit Enhanced CT (~524 MB) is stored, not refused with 0xC000."""
    ds = phantoms.enhanced_ct_dataset(None, shape=(1000, 512, 512))
    path = tmp_path / "big.dcm"
    frame = np.zeros((512, 512), dtype=np.int16)
    phantoms.write_multiframe(ds, (frame for _ in range(1000)), path)
    stored = _receive(ingest, path)
    assert stored.ref.sop_instance_uid == str(ds.SOPInstanceUID)
    assert Path(stored.ref.path).stat().st_size == path.stat().st_size > FRAMES_1000


def test_instance_decoding_past_the_limit_is_refused_naming_the_key(ingest: Ingest, tmp_path: Path) -> None:
    """A header claiming 2100 frames of 512 x 512 (1.1 GB decoded) is refused 0xC000 with the config key."""
    ds = phantoms.enhanced_ct_dataset(None, shape=(2100, 512, 512))
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:1]
    path = tmp_path / "claim.dcm"
    ds.PixelData = np.zeros((512, 512), dtype="<i2").tobytes()  # one frame's bytes, 2100 claimed
    phantoms.write_dataset(ds, path)
    with pytest.raises(RejectedInstance) as info:
        _receive(ingest, path)
    assert info.value.kind == Refusal.CANNOT_UNDERSTAND
    assert "storage.max_instance_bytes" in info.value.reason
