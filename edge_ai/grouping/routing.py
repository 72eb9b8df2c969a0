"""Routing (pure): rules on DICOM tags pick the model(s) and destinations for a series."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydicom

from edge_ai.config import Route
from edge_ai.dicom.contexts import ANALYSED


@dataclass(frozen=True)
class RouteDecision:
    route: str
    model: str
    destinations: tuple[str, ...]


def _values(ds: pydicom.Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return []
    if isinstance(value, pydicom.multival.MultiValue):
        return [str(v).strip().upper() for v in value]
    return [str(value).strip().upper()]


def matches(route: Route, ds: pydicom.Dataset) -> bool:
    m = route.match
    for keyword, wanted in (
        ("Modality", m.Modality),
        ("BodyPartExamined", m.BodyPartExamined),
        ("SOPClassUID", m.SOPClassUID),
    ):
        if wanted is not None and not {w.upper() for w in wanted} & set(_values(ds, keyword)):
            return False
    if m.SeriesDescription is not None and not re.search(m.SeriesDescription, str(ds.get("SeriesDescription") or "")):
        return False
    if m.ImageType is not None and not {v.upper() for v in m.ImageType} <= set(_values(ds, "ImageType")):
        return False
    if m.SliceThickness is not None:
        try:
            thickness = float(ds.get("SliceThickness"))
        except (TypeError, ValueError):
            return False  # a range cannot match an image that does not state its thickness
        return m.SliceThickness.contains(thickness)
    return True


def route(routes: list[Route], ds: pydicom.Dataset, all_destinations: list[str]) -> list[RouteDecision]:
    """Every rule that matches the series' first instance, in config order, one decision per model."""
    if str(ds.get("SOPClassUID", "")) not in ANALYSED:
        return []
    decisions: dict[str, RouteDecision] = {}
    for r in routes:
        if not matches(r, ds):
            continue
        dests = tuple(r.destinations) if r.destinations is not None else tuple(all_destinations)
        for model in r.model_names:
            decisions.setdefault(model, RouteDecision(r.name, model, dests))
    return list(decisions.values())
