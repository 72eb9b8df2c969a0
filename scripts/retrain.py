#!/usr/bin/env python3
"""Fine-tune the demo chest model on a de-identified export and write a new model package.

DEMO on synthetic phantoms: it shows the drift loop end to end (export -> retrain -> `edge-ai
model install --shadow` -> promote), not how to retrain a clinical model. Needs torch (the `train`
extra: `pip install torch==2.13.0`); edge_ai itself never imports it.

    python scripts/retrain.py EXPORT_DIR --out /tmp/demo-chest-xr-1.0.1
    python scripts/retrain.py EXPORT_DIR --base edge_ai/models/demo_chest_xr --version 1.0.1 --epochs 4

What it does:
1. Reads EXPORT_DIR/manifest.jsonl; every series with a training label (the readers' verdicts,
   `label`) and a modality the package serves gives its exported images, preprocessed exactly as
   the node does (edge_ai.imaging.pixels with the package's own spec).
2. Rebuilds the package's network in torch from model.onnx (its convolutions, batch norm already
   folded in) and fine-tunes the last layers on the image-level label (BCE on the top heat-map
   cell, which is what the graph reports as the probability), a few epochs at a small rate.
3. Exports ONNX (opset 17, same inputs and outputs), writes a self-test (an export image and the
   new outputs), drift reference statistics of the export's images (as scripts/drift_reference.py
   computes them, over the package's own bin edges), a new version and its sha256; then loads the
   package and runs its self-test with the serving code, as `edge-ai model validate` does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pydicom
import torch
import yaml
from onnx import numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "scripts"))

from drift_reference import default_edges  # noqa: E402

from edge_ai.imaging import pixels  # noqa: E402
from edge_ai.inference.engine import load_engine, self_test  # noqa: E402
from edge_ai.inference.package import ModelPackage, load_package  # noqa: E402
from edge_ai.observability.drift import reference_from_tensors  # noqa: E402

DISCLAIMER = "Demo model fine-tuned on synthetic phantoms only (drift-loop demo). Not for diagnostic use."


class FoldedDetector(nn.Module):
    """The demo detector as model.onnx holds it: convolutions (+ReLU) and a 1x1 head, then the same
    peak read-out as scripts/train_demo_models.HeatmapDetector.forward."""

    def __init__(self, graph: onnx.GraphProto, size: int) -> None:
        super().__init__()
        weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        layers: list[nn.Module] = []
        for node in convs:
            attrs = {a.name: list(a.ints) for a in node.attribute}
            w = weights[node.input[1]]
            conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(attrs.get("strides", [1, 1])),
                             padding=tuple(attrs.get("pads", [0, 0, 0, 0])[:2]),
                             dilation=tuple(attrs.get("dilations", [1, 1])), bias=True)
            with torch.no_grad():
                conv.weight.copy_(w)
                assert conv.bias is not None
                conv.bias.copy_(weights[node.input[2]] if len(node.input) > 2 else torch.zeros(w.shape[0]))
            layers.append(conv)
        self.body = nn.Sequential(*[m for conv in layers[:-1] for m in (conv, nn.ReLU())])
        self.head = layers[-1]
        x = torch.zeros(1, 1, size, size)
        with torch.no_grad():
            self.grid = int(self.head(self.body(x)).shape[-1])
        centres = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid
        self.gx: torch.Tensor
        self.gy: torch.Tensor
        self.register_buffer("gx", centres.repeat(self.grid), persistent=False)
        self.register_buffer("gy", centres.repeat_interleave(self.grid), persistent=False)

    def top_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))[:, 0].flatten(1).amax(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.body(x))
        logits, offset, radius = h[:, 0], h[:, 1:3], torch.sigmoid(h[:, 3]) * 0.25
        flat = logits.flatten(1)
        idx = flat.argmax(dim=1, keepdim=True)
        probability = torch.sigmoid(flat.gather(1, idx).squeeze(1))
        cell = idx.squeeze(1)
        off = offset.flatten(2).gather(2, idx[:, None, :].expand(-1, 2, -1)).squeeze(2)
        cx = self.gx[cell] + off[:, 0] / self.grid
        cy = self.gy[cell] + off[:, 1] / self.grid
        r = radius.flatten(1).gather(1, idx).squeeze(1)
        return probability, torch.stack([cx - r, cy - r, cx + r, cy + r], dim=1).clamp(0.0, 1.0)


def load_export(folder: Path, pkg: ModelPackage) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(inputs [N,1,H,W], labels [N]) of every labelled image of the package's modalities."""
    xs, ys = [], []
    counts = {"series": 0, "labelled": 0, "images": 0, "other_modality": 0}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        counts["series"] += 1
        if entry.get("label") is None:
            continue
        if entry.get("modality") not in pkg.modalities:
            counts["other_modality"] += 1
            continue
        counts["labelled"] += 1
        for name in entry["files"]:
            for frame in pixels.preprocess_frames(pydicom.dcmread(folder / name), pkg.preprocessing):
                xs.append(np.asarray(frame, dtype=np.float32).reshape(1, *frame.shape[-2:]))
                ys.append(float(bool(entry["label"])))
    counts["images"] = len(xs)
    if not xs:
        raise SystemExit(f"{folder}: no labelled {'/'.join(pkg.modalities)} images in the manifest ({counts})")
    return np.stack(xs), np.asarray(ys, dtype=np.float32), counts


def fine_tune(model: FoldedDetector, xs: np.ndarray, ys: np.ndarray, epochs: int, lr: float,
              seed: int) -> dict[str, float]:
    """Train the head and the last body convolution on the image-level label; earlier layers stay."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tuned = [*model.head.parameters(), *list(model.body.parameters())[-2:]]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in tuned:
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned, lr=lr)
    bce = nn.BCEWithLogitsLoss()
    x_all, y_all = torch.from_numpy(xs), torch.from_numpy(ys)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            logit = model.top_logit(x_all)
        return float(bce(logit, y_all)), float(((logit > 0).float() == y_all).float().mean())

    before = evaluate()
    for _ in range(epochs):
        for start in range(0, len(xs), 8):
            idx = rng.permutation(len(xs))[start : start + 8]
            loss = bce(model.top_logit(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = evaluate()
    return {"loss_before": before[0], "accuracy_before": before[1], "loss_after": after[0], "accuracy_after": after[1]}


def next_version(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)]) if parts[-1].isdigit() else version + ".1"


def write_package(model: FoldedDetector, base: ModelPackage, out: Path, version: str, xs: np.ndarray,
                  figures: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    size = base.input.height
    torch.onnx.export(model, (torch.zeros(1, 1, size, size),), str(out / "model.onnx"), input_names=["image"],
                      output_names=["probability", "box"],
                      dynamic_axes={"image": {0: "N"}, "probability": {0: "N"}, "box": {0: "N"}},
                      opset_version=17, dynamo=False)
    import onnxruntime as ort

    selftest = xs[:1]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probability, box = session.run(["probability", "box"], {"image": selftest})
    np.savez_compressed(out / "selftest.npz", input=selftest, probability=probability, box=box)
    assert base.path is not None
    meta = yaml.safe_load((base.path / "model.yaml").read_text())
    meta.update({
        "version": version,
        "description": f"{meta['description']} Fine-tuned from {base.version} on a drift-loop export (demo).",
        "disclaimer": DISCLAIMER,
        "reference": reference_from_tensors(list(xs), default_edges(base, 32)),
        "sha256": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
        "selftest": {"file": "selftest.npz", "atol": 1e-3, "rtol": 1e-3},
    })
    (out / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=120))
    (out / "README.md").write_text(
        f"# {base.name} {version} (DEMO, synthetic phantoms only)\n\n"
        f"Fine-tuned from {base.name} {base.version} by scripts/retrain.py on a de-identified drift-loop\n"
        f"export of phantom images labelled by reader feedback. Not for diagnostic use.\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in figures.items())
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", type=Path, help="folder written by `edge-ai export` (manifest.jsonl)")
    p.add_argument("--base", type=Path, default=ROOT / "edge_ai" / "models" / "demo_chest_xr")
    p.add_argument("--out", type=Path, required=True, help="new package folder")
    p.add_argument("--version", help="new version (default: the base's with its last number + 1)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(2)
    base = load_package(args.base)
    version = args.version or next_version(base.version)
    if version == base.version:
        raise SystemExit("--version must differ from the base package's")
    xs, ys, counts = load_export(args.export, base)
    model = FoldedDetector(onnx.load(str(base.onnx_path)).graph, base.input.height)
    result = fine_tune(model, xs, ys, args.epochs, args.lr, args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    figures = {**counts, "positives": int(ys.sum()), "epochs": args.epochs,
               **{k: round(v, 4) for k, v in result.items()}}
    write_package(model, base, args.out, version, xs, figures)
    pkg = load_package(args.out)
    engine = load_engine(pkg, "onnxruntime")
    ok, detail = self_test(engine)
    engine.close()
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps({"package": str(args.out), "name": pkg.name, "version": pkg.version, "sha256": pkg.sha256,
                      "self_test": "pass" if ok else detail, **figures}, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
