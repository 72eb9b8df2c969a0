"""Model package: model.yaml (schema below), model.onnx and selftest.npz, hash-checked on load."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_ai.errors import ModelError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    shape: list[int]  # -1 for the batch axis: [-1, 1, H, W]
    dtype: Literal["float32", "float16"] = "float32"

    @property
    def height(self) -> int:
        return self.shape[-2]

    @property
    def width(self) -> int:
        return self.shape[-1]


class Window(_Strict):
    """VOI window. `source: dataset` uses the instance's own Window Center/Width (first value),
    falling back to the 1st..99th percentile of the modality-LUT output; `source: fixed` uses center/width."""

    source: Literal["dataset", "fixed", "percentile"] = "fixed"
    center: float | None = None
    width: float | None = None
    percentiles: tuple[float, float] = (1.0, 99.0)


class Preprocessing(_Strict):
    """Image -> tensor: modality LUT, window to [0, 1], MONOCHROME1 inverted (so bright = dense),
    resized to input H x W (bilinear, aspect not kept), then (x - mean) / std."""

    window: Window
    resize: tuple[int, int]  # (rows, columns) == input shape[-2:]
    mean: float = 0.0
    std: float = 1.0
    invert_monochrome1: bool = True


class OutputSpec(_Strict):
    name: str  # tensor name in model.onnx
    meaning: str


class Code(_Strict):
    value: str
    scheme: str  # e.g. SCT
    meaning: str


class Label(_Strict):
    finding: Code  # the coded concept reported when positive (e.g. SCT 427359005 "Solitary nodule of lung")
    finding_site: Code | None = None


class SelfTest(_Strict):
    """selftest.npz holds `input` (a batch in the model's input layout) and one array per output name."""

    file: str = "selftest.npz"
    atol: float = 1e-3
    rtol: float = 1e-3
    fp16_atol: float = 2e-2  # a half-precision engine (TensorRT FP16) is held to this instead


class DriftReference(_Strict):
    """Statistics of the preprocessed inputs seen in validation (used by the drift monitor)."""

    histogram_edges: list[float]
    histogram: list[float]
    mean: float
    std: float


class ModelPackage(_Strict):
    """model.yaml. Outputs are always `probability` [N] and `box` [N, 4] (x0, y0, x1, y1 in 0..1
    of the model input, which maps 1:1 onto the source image because resize keeps the frame)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[0-9A-Za-z.+_-]{1,32}$")
    task: Literal["image-detection", "series-detection"]
    description: str
    disclaimer: str | None = None  # printed in every SR when set
    modalities: list[str]
    input: TensorSpec
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    preprocessing: Preprocessing
    outputs: dict[Literal["probability", "box"], OutputSpec]
    labels: dict[str, Label]  # key "finding"
    thresholds: dict[str, float]  # key "finding": probability at or above which it is reported
    reference: DriftReference | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    selftest: SelfTest = SelfTest()
    # set by load(), not in the YAML
    path: Path | None = None

    @property
    def onnx_path(self) -> Path:
        assert self.path is not None
        return self.path / "model.onnx"

    @property
    def selftest_path(self) -> Path:
        assert self.path is not None
        return self.path / self.selftest.file

    @property
    def threshold(self) -> float:
        return self.thresholds["finding"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_package(directory: Path, *, verify_hash: bool = True) -> ModelPackage:
    """Read and validate model.yaml; check model.onnx against its sha256.

    Raises:
        ModelError: the package is missing, malformed or tampered with.
    """
    meta = directory / "model.yaml"
    if not meta.is_file():
        raise ModelError(f"{directory}: no model.yaml")
    try:
        raw = yaml.safe_load(meta.read_text())
        pkg = ModelPackage.model_validate({**raw, "path": directory})
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ModelError(f"{meta}: {_first_error(exc)}") from exc
    if not pkg.onnx_path.is_file():
        raise ModelError(f"{directory}: no model.onnx")
    if verify_hash:
        actual = file_sha256(pkg.onnx_path)
        if actual != pkg.sha256:
            raise ModelError(
                f"{pkg.onnx_path}: sha256 {actual} does not match model.yaml sha256 {pkg.sha256}"
            )
    if tuple(pkg.preprocessing.resize) != (pkg.input.height, pkg.input.width):
        raise ModelError(f"{meta}: preprocessing.resize must equal input shape[-2:]")
    return pkg


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc}: {err['msg']}"
    return str(exc)
