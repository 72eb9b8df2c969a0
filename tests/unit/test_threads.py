"""The inference worker's BLAS thread limit (edge_ai.inference.threads): resize stays fast on few cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_ai.imaging import pixels
from edge_ai.inference.threads import _loaded_openblas, limit_blas_threads


def test_finds_openblas_libraries_in_the_memory_map(tmp_path: Path) -> None:
    """Only OpenBLAS shared objects are picked from /proc/self/maps, each once."""
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 0 08:01 1 /usr/lib/libscipy_openblas64_-abc.so\n"
        "7f01-7f02 r--p 0 08:01 1 /usr/lib/libscipy_openblas64_-abc.so\n"
        "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libm.so.6\n"
        "7f03-7f04 rw-p 0 00:00 0\n"
    )
    assert _loaded_openblas(maps) == ["/usr/lib/libscipy_openblas64_-abc.so"]
    assert _loaded_openblas(tmp_path / "absent") == []


def test_resize_is_unchanged_in_value_with_one_blas_thread() -> None:
    """Limiting BLAS threads keeps the resized image (to float32 rounding) and is safe to repeat."""
    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    before = pixels.resize(img, (128, 128))
    limit_blas_threads(1)
    limit_blas_threads(1)
    np.testing.assert_allclose(pixels.resize(img, (128, 128)), before, rtol=0, atol=1e-6)
