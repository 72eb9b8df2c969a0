#!/usr/bin/env python3
"""Train, export and evaluate the two shipped demo models (dev only; needs torch, never imported
by edge_ai).

    pip install torch==2.13.0
    python scripts/train_demo_models.py              # both models, writes edge_ai/models/demo_*
    python scripts/train_demo_models.py --model ct   # just one

Every training input goes through the SAME path as serving: phantom -> pydicom Dataset
(edge_ai.phantoms.dx_dataset / ct_series_datasets) -> edge_ai.imaging.pixels.preprocess with the
package's own Preprocessing spec. Seeds are fixed and the train / validation / test seed ranges
do not overlap, so the figures written to each README are measured on phantoms the model never saw.

Model: a small fully-convolutional net whose head gives, per heat-map cell, a centre logit, a
sub-cell offset (x, y) and a radius. The heat map is trained densely (CenterNet-style focal loss
against a Gaussian at the lesion centre, all zero on lesion-free images) plus a BCE on each image's
top cell; offset and radius are trained (L1) on the cells around the centre. Inside the ONNX graph
(opset 17): probability = sigmoid(max logit); box centre = the HARD argmax cell plus the offset
gathered there; half-size = the radius gathered there. Nothing away from the peak moves the box.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from edge_ai import phantoms  # noqa: E402
from edge_ai.imaging import pixels  # noqa: E402
from edge_ai.inference.package import Preprocessing, Window, load_package  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "edge_ai_train_cache"  # generated inputs, reused between runs
DISCLAIMER = "Demo model trained on synthetic phantoms only. Not for diagnostic use."


@dataclass(frozen=True)
class Spec:
    name: str
    folder: str
    task: str
    modalities: list[str]
    size: int  # model input rows = columns
    stride: int  # heat-map cell size in input pixels
    preprocessing: Preprocessing
    batch_sizes: list[int]
    train_seeds: range
    val_seeds: range
    test_seeds: range
    epochs: int
    label: dict[str, Any]
    description: str


DX = Spec(
    name="demo-chest-xr",
    folder="demo_chest_xr",
    task="image-detection",
    modalities=["DX", "CR"],
    size=256,
    stride=8,
    preprocessing=Preprocessing(
        window=Window(source="percentile", percentiles=(1.0, 99.0)), resize=(256, 256), mean=0.5, std=0.25
    ),
    batch_sizes=[1],
    train_seeds=range(10_000, 11_200),
    val_seeds=range(20_000, 20_200),
    test_seeds=range(30_000, 30_300),
    epochs=14,
    label={
        "finding": {"value": "427359005", "scheme": "SCT", "meaning": "Solitary nodule of lung"},
        "finding_site": {"value": "39607008", "scheme": "SCT", "meaning": "Lung structure"},
    },
    description="Demo: detects a round opacity (solitary nodule) in a lung field on a chest X-ray.",
)
CT = Spec(
    name="demo-ct-lesion",
    folder="demo_ct",
    task="series-detection",
    modalities=["CT"],
    size=128,
    stride=4,
    preprocessing=Preprocessing(
        window=Window(source="fixed", center=80.0, width=250.0), resize=(128, 128), mean=0.5, std=0.25
    ),
    batch_sizes=[1, 8, 16],
    train_seeds=range(40_000, 40_200),  # 20-slice volumes (more distinct lesions per CPU second)
    val_seeds=range(50_000, 50_030),  # 40-slice volumes, like the test set
    test_seeds=range(60_000, 60_080),
    epochs=12,
    label={"finding": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
    description="Demo: detects a small hyperdense (+60..+120 HU) soft-tissue lesion on an axial CT series.",
)


# --------------------------------------------------------------------------- data


def _dx_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One DX phantom -> (input [1, H, W], target [present, col, row, radius] normalised 0..1)."""
    rng = np.random.default_rng(seed)
    ds, truth = phantoms.dx_case(rng, lesion=seed % 2 == 0, monochrome1=seed % 7 == 3)
    x = pixels.preprocess(ds, DX.preprocessing)
    n = float(ds.Columns)
    t = [0.0, 0.0, 0.0, 0.0] if truth is None else [1.0, truth.col / n, truth.row / n, truth.radius / n]
    return x, np.asarray([t], dtype=np.float32)


def _ct_case(seed: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """One CT series -> (inputs [S, 1, H, W], per-slice targets [S, 4])."""
    rng = np.random.default_rng(seed)
    series, truth = phantoms.ct_case(rng, slices=slices, lesion=seed % 2 == 0)
    xs = np.stack([pixels.preprocess(ds, CT.preprocessing) for ds in series])
    n = float(series[0].Columns)
    t = np.zeros((slices, 4), dtype=np.float32)
    if truth is not None:
        assert truth.first_slice is not None and truth.last_slice is not None
        half = (truth.last_slice - truth.first_slice) / 2
        kc = truth.first_slice + half
        for k in range(truth.first_slice, truth.last_slice + 1):
            r_k = truth.radius * np.sqrt(1.0 - ((k - kc) / (half + 1)) ** 2)
            t[k] = [1.0, truth.col / n, truth.row / n, r_k / n]
    return xs, t


def _ct_train(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _ct_case(seed, 20)


def _ct_eval(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _ct_case(seed, 40)


def load_cases(
    tag: str, fn: Callable[[int], tuple[np.ndarray, np.ndarray]], seeds: Iterable[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cases for `seeds`, generated on every core and cached in /tmp between runs."""
    seeds = list(seeds)
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{tag}_{seeds[0]}_{seeds[-1]}.npz"
    if path.exists():
        z = np.load(path)
        return [(z[f"x{i}"], z[f"t{i}"]) for i in range(len(seeds))]
    t0 = time.time()
    with ProcessPoolExecutor() as pool:
        cases = list(pool.map(fn, seeds, chunksize=4))
    arrays: dict[str, Any] = {f"x{i}": c[0] for i, c in enumerate(cases)}
    arrays.update({f"t{i}": c[1] for i, c in enumerate(cases)})
    np.savez(path, **arrays)
    print(f"  generated {len(cases)} {tag} cases in {time.time() - t0:.0f} s")
    return cases


# --------------------------------------------------------------------------- model


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeatmapDetector(nn.Module):
    """Fully convolutional: [N,1,S,S] -> four maps on a (S/stride)^2 grid of cells:
    a centre heat map (logits), a sub-cell offset (x, y, in cells) and a radius (fraction of width).

    forward() is what the ONNX graph computes: probability = sigmoid of the heat map's maximum;
    the box is centred on that cell (HARD argmax, so nothing elsewhere in the image can pull it)
    plus the offset predicted at that cell, with half-size = the radius predicted at that cell.
    """

    def __init__(self, size: int, stride: int, width: int = 32) -> None:
        super().__init__()
        downs = int(np.log2(stride))
        chans = [8, 16, 24, 32][:downs]
        layers: list[nn.Module] = []
        cin = 1
        for c in chans:
            layers += [_block(cin, c, stride=2)]
            cin = c
        layers += [_block(cin, width), _block(width, width, dilation=2), _block(width, width, dilation=4)]
        layers += [_block(width, width, dilation=8), _block(width, width)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 4, 1)
        assert self.head.bias is not None
        with torch.no_grad():  # start from "nothing anywhere" (prior 0.01), zero offset, mid radius
            self.head.bias.copy_(torch.tensor([-4.6, 0.0, 0.0, -1.5]))
        self.grid = size // stride
        g = self.grid
        # cell centres in 0..1, row-major like flatten(); the receptive field of a stride-2 conv with
        # padding 1 is centred on input pixel 2i, not 2i + 0.5: the offset head learns that shift too.
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        self.gx: torch.Tensor
        self.gy: torch.Tensor
        self.register_buffer("gx", centres.repeat(g), persistent=False)
        self.register_buffer("gy", centres.repeat_interleave(g), persistent=False)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> heat-map logits [N,g,g], offset [N,2,g,g] (cells), radius [N,g,g] (fraction of width)."""
        h = self.head(self.body(x))
        return h[:, 0], h[:, 1:3], torch.sigmoid(h[:, 3]) * 0.25

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offset, radius = self.maps(x)
        flat = logits.flatten(1)  # [N, g*g]
        idx = flat.argmax(dim=1, keepdim=True)  # [N, 1] the peak cell (ONNX ArgMax)
        probability = torch.sigmoid(flat.gather(1, idx).squeeze(1))
        cell = idx.squeeze(1)
        off = offset.flatten(2).gather(2, idx[:, None, :].expand(-1, 2, -1)).squeeze(2)  # [N, 2]
        cx = self.gx[cell] + off[:, 0] / self.grid
        cy = self.gy[cell] + off[:, 1] / self.grid
        r = radius.flatten(1).gather(1, idx).squeeze(1)
        box = torch.stack([cx - r, cy - r, cx + r, cy + r], dim=1).clamp(0.0, 1.0)
        return probability, box


def _targets(t: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N,4] targets (present, col, row, radius in 0..1) -> per-cell training targets.

    heat [N,g,g]: a Gaussian around the lesion centre (sigma from its radius), exactly 1 at the cell
        holding the centre, 0 everywhere on a lesion-free image (CenterNet-style).
    offset [N,2,g,g]: true centre minus cell centre, in cells.
    near [N,g,g]: cells where offset and radius are trained (those that can become the peak).
    """
    c = (torch.arange(g, dtype=torch.float32) + 0.5) / g
    dx = (t[:, 1, None, None] - c[None, None, :]) * g  # [N,1,g] cells, + means centre is to the right
    dy = (t[:, 2, None, None] - c[None, :, None]) * g  # [N,g,1]
    dx, dy = dx.expand(-1, g, g), dy.expand(-1, g, g)
    r = t[:, 3, None, None] * g
    present = t[:, 0, None, None] > 0
    sigma = torch.clamp(r / 2, min=0.5)
    d2 = dx**2 + dy**2
    heat = torch.exp(-d2 / (2 * sigma**2))
    peak = (dx.abs() <= 0.5) & (dy.abs() <= 0.5)
    heat = torch.where(peak, torch.ones_like(heat), heat)
    heat = torch.where(present, heat, torch.zeros_like(heat))
    near = present & (d2 <= torch.clamp(r, min=1.0) ** 2 + 0.5)
    return heat, torch.stack([dx, dy], dim=1), near


def _focal(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed over cells / number of lesions in the batch."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat >= 1.0
    lp = -torch.log(p) * (1 - p) ** 2
    ln = -torch.log(1 - p) * p**2 * (1 - heat) ** 4
    n = torch.clamp(pos.sum(), min=1)
    return (lp[pos].sum() + ln[~pos].sum()) / n


def _shift(xb: torch.Tensor, tb: torch.Tensor, rng: np.random.Generator, most: int) -> None:
    """Translate each image by up to `most` pixels (edge pixels replicated), targets to match."""
    n, _, h, w = xb.shape
    for i in range(n):
        sx, sy = (int(v) for v in rng.integers(-most, most + 1, 2))
        if sx == 0 and sy == 0:
            continue
        pad = nn.functional.pad(xb[i : i + 1], (most, most, most, most), mode="replicate")
        xb[i] = pad[0, :, most - sy : most - sy + h, most - sx : most - sx + w]
        if tb[i, 0] > 0:
            tb[i, 1] += sx / w
            tb[i, 2] += sy / h


def train(spec: Spec, xs: np.ndarray, ts: np.ndarray, seed: int) -> HeatmapDetector:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = HeatmapDetector(spec.size, spec.stride)
    g = model.grid
    pos = np.nonzero(ts[:, 0] > 0)[0]
    neg = np.nonzero(ts[:, 0] == 0)[0]
    per_epoch = min(len(neg), 3 * len(pos)) + len(pos) * (1 if len(pos) * 3 > len(neg) else 2)
    steps = spec.epochs * per_epoch // 32
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    bce = nn.BCEWithLogitsLoss()
    model.train()
    t0 = time.time()
    for step in range(steps):
        # balanced batches: half with a lesion
        idx = np.concatenate([rng.choice(pos, 16), rng.choice(neg, 16)])
        xb = torch.from_numpy(xs[idx]).clone()
        tb = torch.from_numpy(ts[idx]).clone()
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        xb[flip] = xb[flip].flip(-1)
        tb[flip, 1] = torch.where(tb[flip, 0] > 0, 1.0 - tb[flip, 1], tb[flip, 1])
        _shift(xb, tb, rng, spec.stride * 2)
        xb = xb * (1 + 0.05 * torch.randn(len(idx), 1, 1, 1)) + 0.05 * torch.randn(len(idx), 1, 1, 1)
        logits, offset, radius = model.maps(xb)
        heat, off_t, near = _targets(tb, g)
        loss_heat = _focal(logits, heat)
        # the top cell of every image, lesion or not, is what the graph reports: train it directly
        loss_img = bce(logits.flatten(1).amax(1), tb[:, 0])
        if near.any():
            loss_off = (offset - off_t).abs().sum(1)[near].mean()
            loss_r = (radius[near] - tb[:, 3, None, None].expand_as(radius)[near]).abs().mean() * 20
        else:
            loss_off = loss_r = torch.zeros(())
        loss = loss_heat + loss_img + loss_off + loss_r
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"  step {step}/{steps} loss {float(loss.detach()):.3f} heat {float(loss_heat):.3f} img "
                f"{float(loss_img):.3f} off {float(loss_off):.3f} r {float(loss_r):.3f} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
    return model.eval()


# --------------------------------------------------------------------------- evaluation


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half)."""
    p, n = scores[labels > 0], scores[labels == 0]
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    gt = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
    return float(gt / (len(p) * len(n)))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity (midpoint between neighbours)."""
    cand = np.unique(scores)
    best, best_t = -1.0, 0.5
    for i, t in enumerate(cand):
        sens = (scores[labels > 0] >= t).mean()
        spec = (scores[labels == 0] < t).mean()
        if sens + spec > best:
            best = sens + spec
            best_t = float((t + cand[i - 1]) / 2) if i > 0 else float(t)
    return best_t


def run_onnx(path: Path, xs: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, boxes = [], []
    for i in range(0, len(xs), batch):
        p, b = sess.run(["probability", "box"], {"image": xs[i : i + batch]})
        probs.append(p)
        boxes.append(b)
    return np.concatenate(probs), np.concatenate(boxes)


def centre_error(box: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Distance from box centre to lesion centre, in lesion radii."""
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    return np.asarray(np.hypot(cx - t[:, 1], cy - t[:, 2]) / np.maximum(t[:, 3], 1e-6))


def centre_inside(box: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Box centre (0..1) inside the lesion disc of target t = [present, col, row, radius] (0..1)."""
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    return np.asarray(np.hypot(cx - t[:, 1], cy - t[:, 2]) <= t[:, 3])


# --------------------------------------------------------------------------- packaging


def export(model: HeatmapDetector, spec: Spec, path: Path) -> None:
    dummy = torch.zeros(1, 1, spec.size, spec.size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["probability", "box"],
        dynamic_axes={"image": {0: "N"}, "probability": {0: "N"}, "box": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )


def reference_stats(xs: np.ndarray, spec: Spec) -> dict[str, Any]:
    pp = spec.preprocessing
    lo, hi = (0.0 - pp.mean) / pp.std, (1.0 - pp.mean) / pp.std
    edges = np.linspace(lo, hi, 33)
    hist, _ = np.histogram(np.clip(xs, lo, hi), bins=edges)
    return {
        "histogram_edges": [round(float(e), 6) for e in edges],
        "histogram": [round(float(h), 6) for h in hist / hist.sum()],
        "mean": round(float(xs.mean()), 6),
        "std": round(float(xs.std()), 6),
    }


def write_package(spec: Spec, folder: Path, threshold: float, ref: dict[str, Any], selftest: np.ndarray) -> None:
    onnx_path = folder / "model.onnx"
    p, b = run_onnx(onnx_path, selftest, len(selftest))
    np.savez_compressed(folder / "selftest.npz", input=selftest, probability=p, box=b)
    pp = spec.preprocessing
    meta = {
        "name": spec.name,
        "version": "1.0.0",
        "task": spec.task,
        "description": spec.description,
        "disclaimer": DISCLAIMER,
        "modalities": spec.modalities,
        "input": {"name": "image", "shape": [-1, 1, spec.size, spec.size], "dtype": "float32"},
        "batch_sizes": spec.batch_sizes,
        "preprocessing": json.loads(pp.model_dump_json()),
        "outputs": {
            "probability": {"name": "probability", "meaning": "probability that the finding is present [N]"},
            "box": {
                "name": "box",
                "meaning": "x0, y0, x1, y1 of the most likely finding, 0..1 of the input [N, 4]",
            },
        },
        "labels": {"finding": spec.label},
        "thresholds": {"finding": round(threshold, 4)},
        "reference": ref,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "selftest": {"file": "selftest.npz", "atol": 1e-3, "rtol": 1e-3},
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=120))
    load_package(folder)  # the package must load with the serving code


# --------------------------------------------------------------------------- per model


def _flatten(cases: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.concatenate([c[0] if c[0].ndim == 4 else c[0][None] for c in cases]).astype(np.float32)
    ts = np.concatenate([c[1] for c in cases]).astype(np.float32)
    return xs, ts


def build(
    spec: Spec, fn_train: Callable[[int], Any], fn_eval: Callable[[int], Any], *, package_only: bool = False
) -> dict[str, Any]:
    """Train + export (unless package_only: re-evaluate the existing model.onnx), then package."""
    print(f"== {spec.name}")
    folder = ROOT / "edge_ai" / "models" / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    xs, ts = _flatten(load_cases(spec.folder + "_train", fn_train, spec.train_seeds))
    val = load_cases(spec.folder + "_val", fn_eval, spec.val_seeds)
    test = load_cases(spec.folder + "_test", fn_eval, spec.test_seeds)
    print(f"  train inputs {xs.shape}, positives {int(ts[:, 0].sum())}")
    if not package_only:
        t0 = time.time()
        model = train(spec, xs, ts, seed=1234)
        print(f"  trained in {time.time() - t0:.0f} s")
        torch.save(model.state_dict(), CACHE / f"{spec.folder}_model.pt")
        export(model, spec, folder / "model.onnx")
    batch = max(spec.batch_sizes)
    series = spec.task == "series-detection"

    def scores(cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        vx, vt = _flatten(cases)
        p, b = run_onnx(folder / "model.onnx", vx, batch)
        out = {"p": p, "b": b, "t": vt}
        if series:
            n = cases[0][0].shape[0]
            out["sp"] = p.reshape(-1, n).max(1)
            out["sarg"] = p.reshape(-1, n).argmax(1)
            out["st"] = vt.reshape(-1, n, 4)[:, :, 0].max(1)
        return out

    v, te = scores(val), scores(test)
    thr = youden_threshold(v["sp"], v["st"]) if series else youden_threshold(v["p"], v["t"][:, 0])
    res: dict[str, Any] = {"threshold": round(thr, 4)}
    lab, p = te["t"][:, 0], te["p"]
    tp = (lab > 0) & (p >= thr)
    key = "slice" if series else "image"
    res[f"{key}_auc"] = round(auc(p, lab), 4)
    res[f"{key}_sensitivity"] = round(float(tp.sum() / max(1, (lab > 0).sum())), 4)
    res[f"{key}_specificity"] = round(float(((lab == 0) & (p < thr)).sum() / max(1, (lab == 0).sum())), 4)
    res[f"{key}_tp"] = int(tp.sum())
    res[f"{key}_tp_box_centre_in_lesion"] = round(float(centre_inside(te["b"][tp], te["t"][tp]).mean()), 4)
    err = centre_error(te["b"][tp], te["t"][tp])
    res[f"{key}_tp_centre_error_radii_median"] = round(float(np.median(err)), 3)
    res[f"{key}_tp_centre_error_radii_max"] = round(float(err.max()), 3)
    if series:
        n = test[0][0].shape[0]
        sp, st = te["sp"], te["st"]
        stp = (st > 0) & (sp >= thr)
        res["series_auc"] = round(auc(sp, st), 4)
        res["series_sensitivity"] = round(float(stp.sum() / max(1, (st > 0).sum())), 4)
        res["series_specificity"] = round(float(((st == 0) & (sp < thr)).sum() / max(1, (st == 0).sum())), 4)
        idx = np.arange(len(sp)) * n + te["sarg"]  # the top-scoring slice of each series
        ok = (te["t"][idx, 0] > 0) & centre_inside(te["b"][idx], te["t"][idx])
        res["series_tp"] = int(stp.sum())
        res["series_tp_top_slice_box_centre_in_lesion"] = round(float(ok[stp].mean()), 4)
    res["test_cases"] = len(test)
    res["test_positive_cases"] = int(sum(c[1][:, 0].max() > 0 for c in test))
    print("  " + json.dumps(res))
    sel = _selftest_batch(test, spec)
    write_package(spec, folder, thr, reference_stats(xs, spec), sel)
    (CACHE / f"{spec.folder}_metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    write_readme(spec, folder, res)
    return res


def _selftest_batch(test: list[tuple[np.ndarray, np.ndarray]], spec: Spec) -> np.ndarray:
    if spec.task == "image-detection":
        return test[0][0][None].astype(np.float32)  # batch 1 (the only served batch size)
    xs, ts = test[0]  # seed 60000: a positive series; 8 slices around the lesion
    k = int(np.nonzero(ts[:, 0])[0][0])
    return xs[max(0, k - 2) : max(0, k - 2) + 8].astype(np.float32)


def write_readme(spec: Spec, folder: Path, res: dict[str, Any]) -> None:
    """README.md with the figures measured on the held-out test seeds."""
    series = spec.task == "series-detection"
    pp = spec.preprocessing
    w = pp.window
    window = (
        f"fixed, center {w.center:g} HU, width {w.width:g} HU"
        if w.source == "fixed"
        else f"{w.source}, {w.percentiles[0]:g}th..{w.percentiles[1]:g}th percentile of the image"
    )
    rows = [f"| {k.replace('_', ' ')} | {v} |" for k, v in res.items()]
    g = spec.size // spec.stride
    weights = sum(p.numel() for p in HeatmapDetector(spec.size, spec.stride).parameters())
    code = spec.label["finding"]
    below = [k for k, v in res.items() if ("auc" in k and v < 0.95) or ("in_lesion" in k and v < 0.9)]
    shortfall = f"**Below target: {', '.join(below)}.** Do not rely on these boxes.\n" if below else ""
    what = (
        "axial CT slices; series probability = highest slice probability"
        if series
        else "one chest X-ray (DX/CR) per inference"
    )
    text = f"""# {spec.name}

**Demo model trained on synthetic phantoms only. Not for diagnostic use.**

{spec.description}
Input: {what}; {spec.size} x {spec.size} single-channel tensor named `image`
(batch sizes {spec.batch_sizes}). Outputs: `probability` [N] (sigmoid) and `box` [N, 4]
(x0, y0, x1, y1 in 0..1 of the input, which maps 1:1 onto the source image).
Finding: {code["scheme"]} {code["value"]} "{code["meaning"]}".

## Preprocessing (edge_ai.imaging.pixels.preprocess, the same code in training and serving)
modality LUT -> VOI window ({window}) to 0..1 -> MONOCHROME1 inverted -> antialiased bilinear
resize to {pp.resize[0]} x {pp.resize[1]} -> (x - {pp.mean:g}) / {pp.std:g}.

## Model and outputs
A small fully convolutional net ({weights / 1000:.0f} k weights) maps the input to a {g} x {g} grid of cells (one per
{spec.stride} input pixels) holding a centre logit, a sub-cell offset and a radius. `probability` =
sigmoid of the highest centre logit; `box` is centred on that cell (hard argmax) moved by the offset
predicted there, half-size = the radius predicted there. Trained on per-cell targets (a Gaussian at the
lesion centre, all zero without a lesion), so cells away from a lesion are pushed down explicitly.

## Held-out results (measured, phantoms never seen in training)
Training seeds {spec.train_seeds.start}..{spec.train_seeds.stop - 1}, threshold chosen on validation
seeds {spec.val_seeds.start}..{spec.val_seeds.stop - 1} (Youden's J{", series level" if series else ""}),
figures below on test seeds {spec.test_seeds.start}..{spec.test_seeds.stop - 1} (even seed = lesion present).
"Centre error" is the distance from box centre to lesion centre in lesion radii (below 1 = inside).
"Box centre in lesion" is the fraction of true positives whose box centre lies inside the true lesion disc{
        " (slice level: on that slice; series level: the top-scoring slice of the series)" if series else ""
    }.

| metric | value |
|---|---|
{chr(10).join(rows)}

Targets were AUC >= 0.95 and box centre inside the lesion for >= 90 % of true positives.
{shortfall}These figures say nothing about real patients: the phantoms are simple geometric shapes.

## Retrain
```
pip install torch==2.13.0
python scripts/train_demo_models.py --model {"ct" if series else "dx"}
```
Deterministic seeds; rewrites model.onnx, model.yaml (sha256, threshold, drift reference),
selftest.npz and this README. Not for diagnostic use.
"""
    (folder / "README.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["dx", "ct", "all"], default="all")
    ap.add_argument("--package-only", action="store_true", help="skip training: re-evaluate and re-package model.onnx")
    args = ap.parse_args()
    if args.model in ("dx", "all"):
        build(DX, _dx_case, _dx_case, package_only=args.package_only)
    if args.model in ("ct", "all"):
        build(CT, _ct_train, _ct_eval, package_only=args.package_only)


if __name__ == "__main__":
    main()
