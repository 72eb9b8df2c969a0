"""Kept model versions (SPEC "Model versions"): storage.root/models/<name>/<version>/ and a state file.

Each name has `state.json` {"live", "shadow", "history"}: `live` is the kept version the node serves
instead of the configured package of the same name (None: the configured package), `shadow` runs
beside it and is never delivered, `history` is the stack of earlier live versions (None entries
stand for the configured package) that `rollback` returns to. The file is replaced atomically
under an exclusive lock, so a concurrent `promote` and `rollback` never lose one another's change.
The running node reads it at start and on SIGHUP (app.reload); the commands that change it send
that signal themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_ai.errors import ModelError
from edge_ai.inference.package import ModelPackage, load_package
from edge_ai.spool.store import fsync_dir

_FILES = ("model.yaml", "model.onnx")  # plus the package's self-test file and README.md when present
STATE = "state.json"


@dataclass
class VersionState:
    live: str | None = None
    shadow: str | None = None
    history: list[str | None] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"live": self.live, "shadow": self.shadow, "history": self.history}


class UnknownVersion(ModelError):
    """A name or version that is not kept (exit 1 on the command line)."""


class ModelStore:
    """The versions kept under `root` (storage.root/models)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "model.yaml").is_file())

    def state(self, name: str) -> VersionState:
        try:
            raw = json.loads((self.root / name / STATE).read_text())
        except (OSError, ValueError):
            return VersionState()
        return VersionState(raw.get("live"), raw.get("shadow"), list(raw.get("history") or []))

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version

    def live_path(self, name: str) -> Path | None:
        live = self.state(name).live
        return None if live is None else self.path(name, live)

    def shadow_path(self, name: str) -> Path | None:
        shadow = self.state(name).shadow
        return None if shadow is None else self.path(name, shadow)

    # ---- changing ------------------------------------------------------------------------------
    def install(self, source: Path, *, shadow: bool) -> tuple[ModelPackage, VersionState]:
        """Keep a validated package as a new version; it becomes live, or the shadow.

        The caller validates first (hash and self-test); this checks the hash again on the copy.

        Raises:
            ModelError: the package does not load, or this version is kept with a different model.
        """
        pkg = load_package(source)
        target = self.path(pkg.name, pkg.version)
        if target.exists():
            kept = load_package(target)
            if kept.sha256 != pkg.sha256:
                raise ModelError(f"{pkg.name} {pkg.version} is already kept with another model.onnx "
                                 f"(sha256 {kept.sha256[:12]}...); give the new package a new version")
        else:
            self._copy(pkg, target)
        with self._locked(pkg.name) as state:
            if shadow:
                state.shadow = None if state.live == pkg.version else pkg.version
            elif state.live != pkg.version:
                state.history.append(state.live)
                state.live = pkg.version
                if state.shadow == pkg.version:
                    state.shadow = None
            result = VersionState(state.live, state.shadow, list(state.history))
        return pkg, result

    def promote(self, name: str, version: str) -> VersionState:
        """Make a kept version live; the live one goes onto the history for `rollback`."""
        if version not in self.versions(name):
            raise UnknownVersion(f"model {name} has no kept version {version!r} "
                                 f"(kept: {', '.join(self.versions(name)) or 'none'})")
        with self._locked(name) as state:
            if state.live != version:
                state.history.append(state.live)
                state.live = version
            if state.shadow == version:
                state.shadow = None
            return VersionState(state.live, state.shadow, list(state.history))

    def rollback(self, name: str) -> tuple[str | None, VersionState]:
        """Return to the previous live version; returns the version that was live."""
        if name not in self.names():
            raise UnknownVersion(f"no kept versions of model {name!r}")
        with self._locked(name) as state:
            if not state.history:
                raise UnknownVersion(f"model {name}: no earlier live version to roll back to")
            was = state.live
            state.live = state.history.pop()
            return was, VersionState(state.live, state.shadow, list(state.history))

    # ---- internals -----------------------------------------------------------------------------
    def _copy(self, pkg: ModelPackage, target: Path) -> None:
        assert pkg.path is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{pkg.version}-", dir=target.parent))
        try:
            for name in (*_FILES, pkg.selftest.file, "README.md"):
                src = pkg.path / name
                if src.is_file():
                    shutil.copyfile(src, tmp / name)
                    _fsync(tmp / name)
            load_package(tmp)  # the copy's hash is checked before it is kept
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[VersionState]:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state(name)
            yield state
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(state.as_json(), f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, folder / STATE)
                _fsync_dir(folder)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_dir(path)
