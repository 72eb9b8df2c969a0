"""Routing rules pick models and destinations; summarize turns model outputs into the reported result."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from edge_ai.config import Route, RouteMatch
from edge_ai.dicom.contexts import CR_IMAGE, CT_IMAGE, DX_PRESENTATION, SECONDARY_CAPTURE
from edge_ai.grouping.routing import RouteDecision, route
from edge_ai.inference.aggregate import MAX_FINDINGS, ImageInfo, Images, conclude, summarize
from edge_ai.inference.engine import Outputs

ALL = ["results", "pacs"]


def instance(**tags: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = tags.pop("SOPClassUID", CT_IMAGE)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def rule(name: str, model: str, destinations: list[str] | None = None, **match: Any) -> Route:
    return Route(name=name, match=RouteMatch(**match), model=model, destinations=destinations)


RULES = [
    rule("chest", "chest-xr", Modality=["DX", "CR"], BodyPartExamined=["CHEST"]),
    rule("ct-lung", "ct-lesion", ["pacs"], Modality=["CT"], SeriesDescription=r"(?i)lung|thorax"),
    rule("ct-any", "ct-generic", Modality=["CT"]),
    rule("by-class", "cr-only", SOPClassUID=[CR_IMAGE]),
]


def models(decisions: list[RouteDecision]) -> list[str]:
    return [d.model for d in decisions]


def test_modality_and_body_part_select_the_chest_model() -> None:
    """A chest DX goes to the chest model; a DX of the knee goes nowhere."""
    chest = instance(SOPClassUID=DX_PRESENTATION, Modality="DX", BodyPartExamined="CHEST")
    knee = instance(SOPClassUID=DX_PRESENTATION, Modality="DX", BodyPartExamined="KNEE")
    assert models(route(RULES, chest, ALL)) == ["chest-xr"]
    assert route(RULES, knee, ALL) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_tag_matching_ignores_case_and_padding() -> None:
    """Lower-case or space-padded tag values still match (modalities differ in what they send)."""
    ds = instance(SOPClassUID=DX_PRESENTATION, Modality="dx", BodyPartExamined="chest ")
    assert models(route(RULES, ds, ALL)) == ["chest-xr"]


def test_series_description_regex_is_searched() -> None:
    """A CT whose description mentions the lung also gets the lesion model, sent only to its destinations."""
    lung = instance(Modality="CT", SeriesDescription="Thorax 1.0 B70f")
    head = instance(Modality="CT", SeriesDescription="HEAD 5mm")
    none = instance(Modality="CT")
    decisions = route(RULES, lung, ALL)
    assert models(decisions) == ["ct-lesion", "ct-generic"]
    assert decisions[0] == RouteDecision("ct-lung", "ct-lesion", ("pacs",))
    assert models(route(RULES, head, ALL)) == ["ct-generic"]
    assert models(route(RULES, none, ALL)) == ["ct-generic"]


def test_sop_class_rule() -> None:
    """A rule on SOPClassUID picks CR images whatever their other tags."""
    cr = instance(SOPClassUID=CR_IMAGE, Modality="CR")
    assert models(route(RULES, cr, ALL)) == ["cr-only"]  # no BodyPartExamined: the chest rule fails


def test_rule_without_destinations_sends_to_all() -> None:
    """A rule that names no destinations sends its SR to every configured destination."""
    ds = instance(Modality="CT")
    (decision,) = [d for d in route(RULES, ds, ALL) if d.model == "ct-generic"]
    assert decision.destinations == ("results", "pacs")


def test_one_decision_per_model_first_rule_wins() -> None:
    """Two rules naming the same model make one SR, with the first matching rule's destinations."""
    rules = [
        rule("a", "m", ["pacs"], Modality=["CT"]),
        rule("b", "m", ["results"], Modality=["CT"]),
    ]
    assert route(rules, instance(Modality="CT"), ALL) == [RouteDecision("a", "m", ("pacs",))]


@pytest.mark.parametrize("modality", ["OT", "CT", "DX"])
def test_secondary_capture_is_never_routed(modality: str) -> None:
    """Secondary Capture is stored but never inferred, even when a rule would match."""
    ds = instance(SOPClassUID=SECONDARY_CAPTURE, Modality=modality, BodyPartExamined="CHEST")
    catch_all = [rule("all", "any", None)]
    assert route(catch_all, ds, ALL) == []
    assert route(RULES, ds, ALL) == []
    assert models(route(catch_all, instance(Modality="CT"), ALL)) == ["any"]


# ---- summarize -----------------------------------------------------------------------------------


@dataclass
class FakePackage:
    """summarize reads only these attributes of a ModelPackage."""

    name: str = "demo-chest-xr"
    version: str = "1.0.0"
    threshold: float = 0.5


def images(n: int, rows: int = 100, columns: int = 200) -> list[ImageInfo]:
    return [ImageInfo(f"1.2.3.{i}", DX_PRESENTATION, rows, columns) for i in range(n)]


def outputs(probs: list[float], boxes: list[list[float]] | None = None) -> Outputs:
    box = np.array(boxes if boxes is not None else [[0.1, 0.2, 0.3, 0.4]] * len(probs), dtype=np.float32)
    return Outputs(np.array(probs, dtype=np.float32), box)


def test_boxes_are_scaled_to_image_pixels() -> None:
    """A box in 0..1 of the model input becomes pixel columns/rows of that image."""
    result = summarize(FakePackage(), "onnxruntime", images(1, rows=100, columns=200), outputs([0.9]))
    (finding,) = result.findings
    assert astuple(finding.box) == pytest.approx((20.0, 20.0, 60.0, 40.0))
    assert result.scores[0].box == finding.box


def test_boxes_are_clipped_and_ordered() -> None:
    """A box outside the image or with swapped corners still lands inside the image, top-left first."""
    out = outputs([0.9], [[1.5, 0.8, -0.2, 0.1]])
    (finding,) = summarize(FakePackage(), "onnxruntime", images(1, rows=100, columns=200), out).findings
    assert astuple(finding.box) == pytest.approx((0.0, 10.0, 200.0, 80.0))


def test_series_probability_is_the_maximum() -> None:
    """The series is as suspicious as its most suspicious image."""
    result = summarize(FakePackage(threshold=0.95), "onnxruntime", images(3), outputs([0.2, 0.7, 0.4]))
    assert result.probability == pytest.approx(0.7)
    assert not result.positive and result.findings == ()
    assert len(result.scores) == 3  # every image still has its score


def test_findings_at_or_above_threshold_sorted_by_probability() -> None:
    """Images at or above the threshold become findings, most probable first; the rest do not."""
    result = summarize(FakePackage(threshold=0.5), "onnxruntime", images(4), outputs([0.5, 0.49, 0.8, 0.6]))
    assert [f.sop_instance_uid for f in result.findings] == ["1.2.3.2", "1.2.3.3", "1.2.3.0"]
    assert [f.probability for f in result.findings] == pytest.approx([0.8, 0.6, 0.5])
    assert result.positive and result.threshold == 0.5
    assert all(f.sop_class_uid == DX_PRESENTATION for f in result.findings)
    identity = (result.model_name, result.model_version, result.runtime)
    assert identity == ("demo-chest-xr", "1.0.0", "onnxruntime")


def test_findings_capped_at_max_findings_keeping_the_highest() -> None:
    """A series with many positive images reports only the MAX_FINDINGS most probable."""
    n = MAX_FINDINGS + 5
    probs = [0.5 + i / (2 * n) for i in range(n)]
    result = summarize(FakePackage(), "onnxruntime", images(n), outputs(probs))
    assert len(result.findings) == MAX_FINDINGS
    kept = {f.sop_instance_uid for f in result.findings}
    assert kept == {f"1.2.3.{i}" for i in range(n - MAX_FINDINGS, n)}


def test_output_count_must_match_images() -> None:
    """A model that returns the wrong number of rows is an error, not a silently misaligned report."""
    with pytest.raises(ValueError, match="2 images but 3"):
        summarize(FakePackage(), "onnxruntime", images(2), outputs([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("bad", ["probability", "box"])
def test_non_finite_model_output_is_an_error(bad: str) -> None:
    """A NaN from the model fails the job instead of reporting a series probability of NaN."""
    probs = [float("nan"), 0.9] if bad == "probability" else [0.1, 0.9]
    boxes = [[0.1, 0.1, 0.2, 0.2], [0.1, float("inf"), 0.2, 0.2] if bad == "box" else [0.1, 0.1, 0.2, 0.2]]
    with pytest.raises(ValueError, match="non-finite"):
        summarize(FakePackage(), "onnxruntime", images(2), outputs(probs, boxes))


def test_image_type_and_slice_thickness_ranges_route_ct() -> None:
    """Thin original axial CT goes to the thin-slice model; thick or derived slices go to the other rule."""
    rules = [
        Route(name="thin", match=RouteMatch(Modality=["CT"], ImageType=["ORIGINAL", "AXIAL"],
                                             SliceThickness={"max": 2.0}), model="ct-thin"),
        Route(name="thick", match=RouteMatch(Modality=["CT"], SliceThickness={"min": 2.0001}), model="ct-thick"),
    ]
    thin = instance(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness="1.25")
    derived = instance(Modality="CT", ImageType=["DERIVED", "SECONDARY", "AXIAL"], SliceThickness="1.25")
    thick = instance(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness="5")
    unknown = instance(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert models(route(rules, thin, ALL)) == ["ct-thin"]
    assert route(rules, derived, ALL) == []
    assert models(route(rules, thick, ALL)) == ["ct-thick"]
    assert route(rules, unknown, ALL) == []


def test_one_rule_can_run_several_models() -> None:
    """A rule with `models` runs each of them on the series, one SR per model."""
    rules = [Route(name="both", match=RouteMatch(Modality=["CT"]), models=["a", "b"], destinations=["pacs"])]
    decisions = route(rules, instance(Modality="CT"), ALL)
    assert models(decisions) == ["a", "b"]
    assert all(d.destinations == ("pacs",) for d in decisions)


def test_rule_needs_exactly_one_of_model_or_models() -> None:
    """A rule naming neither, or both, model and models is a config error."""
    with pytest.raises(ValueError, match="exactly one of model or models"):
        Route(name="x", match=RouteMatch())
    with pytest.raises(ValueError, match="exactly one of model or models"):
        Route(name="x", match=RouteMatch(), model="a", models=["b"])


def test_frames_of_one_instance_count_as_images_and_findings_name_their_frame() -> None:
    """Each frame of a multi-frame instance is scored like a slice; a finding names its instance and frame."""
    frames = [ImageInfo("1.2.3.9", "1.2.840.10008.5.1.4.1.1.2.1", 64, 64, n) for n in (1, 2, 3)]
    result = summarize(FakePackage(threshold=0.5), "onnxruntime", frames, outputs([0.1, 0.9, 0.6]))
    assert [s.frame_number for s in result.scores] == [1, 2, 3]
    assert [(f.sop_instance_uid, f.frame_number) for f in result.findings] == [("1.2.3.9", 2), ("1.2.3.9", 3)]
    assert all(f.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1" for f in result.findings)
    single = summarize(FakePackage(threshold=0.5), "onnxruntime", images(1), outputs([0.9]))
    assert single.findings[0].frame_number is None  # a single-frame image's finding names the instance alone


def _per_image(threshold: float, infos: list[ImageInfo], out: Outputs) -> tuple[float, list[tuple[Any, ...]]]:
    """The series probability and findings the way the node first computed them: a Python float and a
    scaled box per image, the positives sorted by probability (stable)."""
    scores = []
    for info, prob, box in zip(infos, out.probability, out.box, strict=True):
        b = np.clip(box.astype(float), 0.0, 1.0)
        x0, x1 = sorted((b[0] * info.columns, b[2] * info.columns))
        y0, y1 = sorted((b[1] * info.rows, b[3] * info.rows))
        scores.append((float(prob), (x0, y0, x1, y1), info))
    ranked = sorted((s for s in scores if s[0] >= threshold), key=lambda s: -s[0])[:MAX_FINDINGS]
    return (max((s[0] for s in scores), default=0.0),
            [(p, box, i.sop_instance_uid, i.sop_class_uid, i.frame_number) for p, box, i in ranked])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conclude_gives_the_per_image_result_without_an_object_per_image(dtype: type) -> None:
    """The node concludes from the job store's columns (`conclude`, vectorised): the series probability,
    verdict and findings (order, boxes, frames) computed image by image, with the image count instead of
    a score per image; also for probabilities on the threshold once in float32, ties and just-under."""
    rng = np.random.default_rng(7)
    threshold = float(np.float32(0.4958))  # a float32 probability can equal it exactly
    for n in (0, 1, 5, 40, 300):
        probs = rng.random(n).astype(dtype)
        if n >= 40:
            probs[[3, 9, 17]] = np.float32(0.4958)  # on the threshold, and tied
            probs[20] = np.nextafter(np.float32(0.4958), np.float32(0))  # just under it
        boxes = rng.random((n, 4)).astype(dtype)
        infos = [ImageInfo(f"1.2.3.{i}", CT_IMAGE if i % 2 else DX_PRESENTATION, 100 + i, 200 - i,
                           None if i % 3 else i + 1) for i in range(n)]
        out = Outputs(probs, boxes)
        columns = Images([i.sop_instance_uid for i in infos], [i.sop_class_uid for i in infos],
                         [i.rows for i in infos], [i.columns for i in infos], [i.frame_number for i in infos])
        lean = conclude(FakePackage(threshold=threshold), "onnxruntime", columns, out)
        probability, findings = _per_image(threshold, infos, out)
        assert lean.scores == () and lean.images == n
        assert lean.probability == probability and lean.positive == bool(findings)
        assert [(f.probability, astuple(f.box), f.sop_instance_uid, f.sop_class_uid, f.frame_number)
                for f in lean.findings] == findings
        assert len(summarize(FakePackage(threshold=threshold), "onnxruntime", infos, out).scores) == n
