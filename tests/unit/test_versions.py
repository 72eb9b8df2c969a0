"""Kept model versions: install, promote, rollback and their refusals, as `edge-ai model` shows them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_ai.config import MODELS_DIR
from edge_ai.errors import ModelError
from edge_ai.inference.versions import ModelStore, UnknownVersion

NAME = "demo-chest-xr"


def _version(tmp: Path, version: str, onnx_from: Path | None = None) -> Path:
    """The demo chest package relabelled as `version` (optionally with another model.onnx and its hash)."""
    folder = tmp / f"pkg-{version}-{onnx_from.name if onnx_from else 'same'}"
    shutil.copytree(MODELS_DIR / "demo_chest_xr", folder)
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    meta["version"] = version
    if onnx_from is not None:
        import hashlib

        shutil.copyfile(onnx_from / "model.onnx", folder / "model.onnx")
        meta["sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    return folder


def test_install_promote_rollback(tmp_path: Path) -> None:
    """A shadow install leaves the live one; promote swaps; rollback returns, down to the configured package."""
    store = ModelStore(tmp_path / "models")
    store.install(_version(tmp_path, "2.0.0"), shadow=True)
    assert store.state(NAME).live is None and store.state(NAME).shadow == "2.0.0"
    state = store.promote(NAME, "2.0.0")
    assert (state.live, state.shadow, state.history) == ("2.0.0", None, [None])
    store.install(_version(tmp_path, "3.0.0"), shadow=False)
    assert store.state(NAME).live == "3.0.0"
    assert store.rollback(NAME)[0] == "3.0.0" and store.state(NAME).live == "2.0.0"
    assert store.rollback(NAME)[0] == "2.0.0" and store.state(NAME).live is None  # the configured package
    with pytest.raises(UnknownVersion, match="no earlier live version"):
        store.rollback(NAME)
    with pytest.raises(UnknownVersion, match=r"no kept version '9\.9\.9'"):
        store.promote(NAME, "9.9.9")
    assert sorted(p.name for p in (tmp_path / "models" / NAME).iterdir() if not p.name.startswith(".")) == [
        "2.0.0", "3.0.0", "state.json"]


def test_same_version_with_another_model_is_refused(tmp_path: Path) -> None:
    """One version never names two different models: a second 2.0.0 with another model.onnx is refused."""
    store = ModelStore(tmp_path / "models")
    store.install(_version(tmp_path, "2.0.0"), shadow=False)
    with pytest.raises(ModelError, match=r"already kept with another model\.onnx"):
        store.install(_version(tmp_path, "2.0.0", onnx_from=MODELS_DIR / "demo_ct"), shadow=False)
    store.install(tmp_path / "pkg-2.0.0-same", shadow=False)  # the same package again: nothing changes
    assert store.state(NAME).history == [None]


def test_cli_exit_codes(tmp_path: Path) -> None:
    """`edge-ai model` answers 1 with a message for an invalid package, an unknown version or nothing to roll back."""
    config = tmp_path / "edge-ai.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"root": "var"}, "models": [{"path": str(MODELS_DIR / "demo_chest_xr")}],
        "routing": [{"name": "c", "match": {"Modality": ["DX"]}, "model": NAME}]}))
    broken = _version(tmp_path, "4.0.0")
    (broken / "model.onnx").write_bytes(b"tampered")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_ai", "model", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=120, check=False)

    for args in (("install", str(broken)), ("promote", NAME, "9.9.9"), ("rollback", NAME)):
        out = cli(*args)
        assert out.returncode == 1 and out.stderr.startswith("edge-ai: "), (args, out)
    ok = cli("install", str(_version(tmp_path, "2.0.0")), "--shadow")
    assert ok.returncode == 0, ok.stderr
    listing = cli("list").stdout
    assert f"{NAME} 1.0.0 (configured package): live" in listing and f"{NAME} 2.0.0: shadow" in listing
    audit = (tmp_path / "var" / "audit" / "audit.jsonl").read_text()  # no node running: recorded directly
    assert '"event":"model.installed"' in audit and '"role":"shadow"' in audit
