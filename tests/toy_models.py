"""Tiny model packages built in a test's tmp folder (the shipped demo packages are trained; these are not)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def make_package(folder: Path, *, name: str = "toy-model", size: int = 32, batch_sizes: tuple[int, ...] = (1, 4),
                 modalities: tuple[str, ...] = ("CT",), threshold: float = 0.5, **overrides: Any) -> Path:
    """probability = sigmoid(mean(image)), box = a fixed (0.25, 0.25, 0.5, 0.5): enough to test plumbing."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])
    prob = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])
    box = helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
        helper.make_node("Sigmoid", ["mean"], ["probability"]),
        helper.make_node("Unsqueeze", ["mean", "one"], ["mean2"]),
        helper.make_node("Mul", ["mean2", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "fixed_box"], ["box"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("fixed_box", TensorProto.FLOAT, [1, 4], [0.25, 0.25, 0.5, 0.5]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "toy", [image], [prob, box], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    x = np.random.default_rng(0).normal(size=(2, 1, size, size)).astype(np.float32)
    mean = x.mean(axis=(1, 2, 3))
    np.savez(folder / "selftest.npz", input=x, probability=(1 / (1 + np.exp(-mean))).astype(np.float32),
             box=np.tile(np.array([[0.25, 0.25, 0.5, 0.5]], np.float32), (2, 1)))
    meta: dict[str, Any] = {
        "name": name, "version": "0.0.1", "task": "series-detection", "description": "toy",
        "disclaimer": "Toy model for tests. Not for diagnostic use.", "modalities": list(modalities),
        "input": {"name": "image", "shape": [-1, 1, size, size]}, "batch_sizes": list(batch_sizes),
        "preprocessing": {"window": {"source": "fixed", "center": 40, "width": 400}, "resize": [size, size]},
        "outputs": {"probability": {"name": "probability", "meaning": "p"}, "box": {"name": "box", "meaning": "b"}},
        "labels": {"finding": {"finding": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}}},
        "thresholds": {"finding": threshold},
        "sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
    }
    meta.update(overrides)
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    return folder
