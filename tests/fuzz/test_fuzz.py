"""Bounded atheris runs in CI: 50,000 inputs per harness, no crash, no input over 10 s, none over 2 GB."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
RUNS = 50_000
LIMITS = ("-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, str(FUZZ / "seeds.py"), str(out)], check=True, timeout=120)
    return out


def _fuzz(harness: str, corpus: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FUZZ / harness), *extra, *LIMITS, f"-artifact_prefix={work}/"],
                          capture_output=True, text=True, cwd=work, timeout=900, check=False)


@pytest.mark.parametrize("harness,corpus", [("fuzz_ingest.py", "ingest"), ("fuzz_pdu.py", "pdu")])
def test_bounded_fuzz_run_finds_nothing(harness: str, corpus: str, seeds: Path, tmp_path: Path) -> None:
    """50,000 mutated inputs through the harness: exit 0, no crash/timeout/oom artifact written."""
    start = time.monotonic()
    out = _fuzz(harness, seeds / corpus, tmp_path, str(seeds / corpus), f"-runs={RUNS}")
    stats = [ln for ln in out.stderr.splitlines() if ln.startswith(("stat::", "Done"))]
    print(f"{harness}: {time.monotonic() - start:.0f} s; " + "; ".join(stats))
    assert out.returncode == 0, out.stderr[-4000:]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert f"Done {RUNS} runs" in out.stderr


def test_past_findings_stay_fixed(tmp_path: Path) -> None:
    """Inputs that once crashed the ingest harness (Rust RLE panic, sequence as a UID) now pass."""
    findings = sorted((FUZZ / "regressions").glob("ingest-*"))
    assert findings
    out = _fuzz("fuzz_ingest.py", tmp_path, tmp_path, *map(str, findings))
    assert out.returncode == 0, out.stderr[-4000:]
