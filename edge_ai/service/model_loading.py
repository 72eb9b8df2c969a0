"""Loading the models the node serves: configured packages, kept live versions, shadows (each self-tested)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_ai.config import Config
from edge_ai.errors import ModelError
from edge_ai.inference.engine import Engine, load_engine, self_test
from edge_ai.inference.package import load_package
from edge_ai.inference.versions import ModelStore
from edge_ai.service.workers import Served

__all__ = ["ModelCheck", "describe", "load_models", "load_shadows"]


@dataclass(frozen=True)
class ModelCheck:
    name: str
    path: str
    ok: bool
    detail: str
    runtime: str = ""


def load_models(
    cfg: Config, audit: Any | None = None, log: Any | None = None
) -> tuple[dict[str, Served], list[ModelCheck]]:
    """Hash-check, load and self-test every configured model; only passing ones are served.

    A version made live with `edge-ai model install/promote` (storage.root/models) is served instead
    of the configured package of the same name; one that no longer loads falls back to the configured
    package (audited as model.rejected).
    """
    store = ModelStore(cfg.storage.root / "models")
    served: dict[str, Served] = {}
    checks: list[ModelCheck] = []
    for ref in cfg.models or []:
        name = ref.path.name
        try:
            pkg = load_package(ref.path)
            name = pkg.name
            kept = store.live_path(pkg.name)
            engine = None
            if kept is not None:
                try:
                    engine = _load_engine(cfg, kept, ref.runtime, audit, log)
                except ModelError as exc:
                    _rejected(audit, log, name, str(kept), str(exc), role="live")
            if engine is None:
                engine = _load_engine(cfg, ref.path, ref.runtime, audit, log)
        except ModelError as exc:
            checks.append(ModelCheck(name, str(ref.path), False, str(exc)))
            _rejected(audit, log, name, str(ref.path), str(exc))
            continue
        pkg = engine.package
        served[pkg.name] = Served(engine)
        checks.append(ModelCheck(pkg.name, str(pkg.path), True, "outputs within tolerance", engine.runtime))
        if audit:
            audit("model.loaded", model=pkg.name, version=pkg.version, sha256=pkg.sha256, runtime=engine.runtime,
                  self_test="pass", path=str(pkg.path))
        if log:
            log.info("model_loaded", model=pkg.name, version=pkg.version, runtime=engine.runtime)
    return served, checks


def load_shadows(
    cfg: Config, served: dict[str, Served], audit: Any | None = None, log: Any | None = None
) -> dict[str, Served]:
    """The shadow version of each served model (`edge-ai model install --shadow`), self-tested."""
    store = ModelStore(cfg.storage.root / "models")
    runtimes = {ref.path.name: ref.runtime for ref in cfg.models or []}
    shadows: dict[str, Served] = {}
    for name, live in served.items():
        path = store.shadow_path(name)
        if path is None:
            continue
        assert live.engine.package.path is not None
        runtime = runtimes.get(live.engine.package.path.name, "auto")
        try:
            engine = _load_engine(cfg, path, runtime, audit, log)
        except ModelError as exc:
            _rejected(audit, log, name, str(path), str(exc), role="shadow")
            continue
        pkg = engine.package
        shadows[name] = Served(engine)
        if audit:
            audit("model.loaded", model=pkg.name, version=pkg.version, sha256=pkg.sha256, runtime=engine.runtime,
                  self_test="pass", path=str(path), role="shadow")
        if log:
            log.info("model_loaded", model=pkg.name, version=pkg.version, runtime=engine.runtime, role="shadow")
    return shadows


def _load_engine(cfg: Config, path: Path, runtime: str, audit: Any | None, log: Any | None) -> Engine:
    """Load and self-test one package; the engine is closed again if the self-test fails."""
    pkg = load_package(path)
    engine = load_engine(pkg, runtime, cfg.storage.root / "engines",
                         on_skip=functools.partial(_skipped, audit, log, pkg.name))
    ok, detail = self_test(engine)
    if not ok:
        engine.close()
        raise ModelError(f"model {pkg.name} {pkg.version}: {detail}")
    return engine


def _rejected(audit: Any | None, log: Any | None, model: str, path: str, reason: str, role: str | None = None) -> None:
    if audit:
        audit("model.rejected", model=model, path=path, reason=reason, role=role)
    if log:
        log.error("model_rejected", model=model, reason=reason, role=role)


def _skipped(audit: Any | None, log: Any | None, model: str, runtime: str, why: str) -> None:
    """`runtime: auto` passed over a runtime: say which and why (e.g. no GPU, engine build failed)."""
    if audit:
        audit("model.runtime_skipped", model=model, runtime=runtime, reason=why)
    if log:
        log.info("model_runtime_skipped", model=model, runtime=runtime, reason=why)


def describe(served: dict[str, Served], shadows: dict[str, Served], drift_threshold: float | None = None
             ) -> list[dict[str, Any]]:
    """Each served model's live and shadow version, hash and runtime (the dashboard's model table)."""

    def one(s: Served) -> dict[str, Any]:
        pkg = s.engine.package
        return {"version": pkg.version, "sha256": pkg.sha256, "runtime": s.engine.runtime}

    return [{"name": name, **one(s), "shadow": one(shadows[name]) if name in shadows else None,
             "drift_threshold": drift_threshold}
            for name, s in sorted(served.items())]
