#!/usr/bin/env python3
"""Recompute a model package's drift reference from a folder of studies.

Runs every image in FOLDER (recursively; DICOM files of the package's modalities, others skipped)
through the package's own preprocessing, exactly as the node does before inference, and prints the
`reference:` block for model.yaml (histogram over fixed bin edges, mean, std). The drift monitor
compares the node's recent inputs with this block (population stability index).

    python scripts/drift_reference.py edge_ai/models/demo_chest_xr /data/validation-studies
    python scripts/drift_reference.py PACKAGE FOLDER --output reference.yaml

The bin edges are the package's current ones when it has a reference (so scores stay comparable),
otherwise `--bins` equal bins over the range a [0, 1] window maps to after normalisation. Pasting
the block into model.yaml does not change model.onnx, so the package's sha256 stays valid; it is
a new package version all the same: bump `version` and validate it before shipping.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_ai.errors import EdgeAIError
from edge_ai.imaging import pixels
from edge_ai.inference.package import ModelPackage, load_package
from edge_ai.observability.drift import reference_from_tensors


def default_edges(pkg: ModelPackage, bins: int) -> np.ndarray:
    """The package's own edges, else `bins` bins over the normalised image of [0, 1]."""
    if pkg.reference is not None:
        return np.asarray(pkg.reference.histogram_edges, dtype=np.float64)
    pp = pkg.preprocessing
    return np.linspace((0.0 - pp.mean) / pp.std, (1.0 - pp.mean) / pp.std, bins + 1)


def tensors(pkg: ModelPackage, folder: Path, counts: dict[str, int]) -> Iterator[np.ndarray]:
    """Every frame of every usable image under `folder`, preprocessed as the node would."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not DICOM (README, DICOMDIR quirks): not an image of this population
            counts["not_dicom"] += 1
            continue
        if str(ds.get("Modality", "")) not in pkg.modalities or "PixelData" not in ds:
            counts["other_modality"] += 1
            continue
        try:
            frames = pixels.preprocess_frames(ds, pkg.preprocessing)
        except EdgeAIError:
            counts["undecodable"] += 1
            continue
        counts["images"] += 1
        yield from frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package", type=Path, help="model package folder (model.yaml)")
    p.add_argument("folder", type=Path, help="folder of studies (DICOM files, searched recursively)")
    p.add_argument("--bins", type=int, default=32, help="bins when the package has no reference yet")
    p.add_argument("--output", type=Path, help="also write the block to this YAML file")
    args = p.parse_args(argv)
    pkg = load_package(args.package)
    counts = {"images": 0, "not_dicom": 0, "other_modality": 0, "undecodable": 0}
    try:
        ref = reference_from_tensors(tensors(pkg, args.folder, counts), default_edges(pkg, args.bins))
    except ValueError:
        print(f"no usable {'/'.join(pkg.modalities)} images under {args.folder} ({counts})", file=sys.stderr)
        return 1
    text = yaml.safe_dump({"reference": ref}, sort_keys=False, width=120)
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    print(f"# {pkg.name} {pkg.version}: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
