"""The running node's status snapshot: a small JSON file under storage.root, rewritten atomically.

`edge-ai status` reads it for what only the running process knows (runtime and drift per model);
the queue database answers the rest. A snapshot older than a few intervals means the node is not
running (or hung: systemd's watchdog will say which).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_ai.observability.agreement import AgreementState
from edge_ai.observability.drift import DriftState

FILENAME = "status.json"
INTERVAL_S = 5.0


def snapshot(
    *,
    pid: int,
    version: str,
    started_at: float,
    models: Mapping[str, tuple[str, str]],
    drift: Iterable[DriftState],
    threshold: float,
    counts: Mapping[str, int],
    metrics_port: int | None,
    agreement: Iterable[AgreementState] = (),
    shadows: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The snapshot's content. `models`: name -> (version, runtime); `shadows`: name -> version, runtime,
    agreement with the live version, series compared."""
    by_model = {s.model: s for s in drift}
    agreed = {a.model: a for a in agreement}
    shadows = shadows or {}
    return {
        "time": time.time(),
        "pid": pid,
        "version": version,
        "started_at": started_at,
        "metrics_port": metrics_port,
        "jobs": dict(counts),
        "models": {
            name: {
                "version": model_version,
                "runtime": runtime,
                "drift": None
                if name not in by_model
                else {
                    "score": by_model[name].score,
                    "threshold": threshold,
                    "samples": by_model[name].samples,
                    "window": by_model[name].window,
                    "drifting": by_model[name].drifting,
                    "episodes": by_model[name].episodes,
                },
                "agreement": None if name not in agreed else {
                    "value": agreed[name].value, "verdicts": agreed[name].verdicts, "window": agreed[name].window,
                    "min": agreed[name].minimum, "low": agreed[name].low, "episodes": agreed[name].episodes,
                },
                "shadow": dict(shadows[name]) if name in shadows else None,
            }
            for name, (model_version, runtime) in sorted(models.items())
        },
    }


def write(path: Path, content: Mapping[str, Any]) -> None:
    """Replace `path` atomically (readers see the old or the new file, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            # one line, through json's C encoder: json.dump and an indent take the Python one, whose
            # nested functions make a reference cycle at every call (every 5 s, for the node's life)
            f.write(json.dumps(content, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def render_models(data: Mapping[str, Any], now: float | None = None) -> list[str]:
    """Lines for `edge-ai status`: node liveness, then runtime and drift per model."""
    now = time.time() if now is None else now
    age = now - float(data.get("time", 0))
    alive = age <= 3 * INTERVAL_S
    lines = [
        f"node: pid {data.get('pid')} version {data.get('version')}, snapshot {age:.0f} s old"
        f"{'' if alive else ' (node not running?)'}"
    ]
    models = data.get("models") or {}
    lines.append(f"models: {len(models)}")
    for name, m in models.items():
        drift = m.get("drift")
        if drift is None:
            verdict = "no reference"
        elif drift.get("score") is None:
            verdict = f"warming up ({drift.get('samples')}/{drift.get('window')} images)"
        else:
            state = "DRIFT" if drift.get("drifting") else "ok"
            verdict = f"{drift['score']:.3f} (threshold {drift.get('threshold')}, {state})"
        lines.append(f"  {name} {m.get('version')} on {m.get('runtime')}: drift {verdict}; "
                     f"agreement {_agreement(m.get('agreement'))}")
        shadow = m.get("shadow")
        if shadow:
            value = shadow.get("agreement")
            lines.append(f"    shadow {shadow.get('version')} on {shadow.get('runtime')}: agrees with live on "
                         f"{'-' if value is None else f'{value:.0%}'} of {shadow.get('compared')} series")
    return lines


def _agreement(a: Mapping[str, Any] | None) -> str:
    if not a or a.get("value") is None:
        return "no reader verdicts yet"
    state = "LOW" if a.get("low") else ("ok" if a.get("verdicts", 0) >= a.get("window", 0) else "window not full")
    return f"{a['value']:.2f} over {a.get('verdicts')}/{a.get('window')} verdicts (min {a.get('min')}, {state})"
