"""DICOMweb STOW-RS (PS3.18 10.5): multipart/related; type="application/dicom" in, the Store Instances
Response Module out as application/dicom+json: Referenced SOP Sequence for what was stored, Failed SOP
Sequence with a Failure Reason (PS3.4 B.2.3) for what was not. 200 all stored, 202 some, 409 none."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from pydicom import Dataset
from starlette.responses import JSONResponse

from edge_ai.http import intake
from edge_ai.http.auth import Principal
from edge_ai.http.context import HttpContext
from edge_ai.http.problems import REFUSAL_ANSWERS, Problem

DICOM_JSON = "application/dicom+json"
_UID_CHARS = frozenset("0123456789.")


def store_response(got: intake.Intake, study_uid: str | None) -> tuple[int, dict[str, Any]]:
    """The PS3.18 response body (DICOM JSON) and its status."""
    ds = Dataset()
    referenced = []
    for o in got.stored:
        assert o.stored is not None
        item = Dataset()
        item.ReferencedSOPClassUID = o.stored.ref.sop_class_uid
        item.ReferencedSOPInstanceUID = o.stored.ref.sop_instance_uid
        referenced.append(item)
    failed = []
    for o in got.failed:
        assert o.refusal is not None
        item = Dataset()
        item.ReferencedSOPClassUID = o.sop_class_uid[:64] if _is_uid(o.sop_class_uid) else ""
        item.ReferencedSOPInstanceUID = o.sop_instance_uid[:64] if _is_uid(o.sop_instance_uid) else ""
        item.FailureReason = REFUSAL_ANSWERS[o.refusal.kind][1]
        failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    status = 200 if not failed else 202 if referenced else 409
    return status, ds.to_json_dict()


def _is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and set(text) <= _UID_CHARS


def add_routes(app: FastAPI, ctx: HttpContext, submit_scope: Any) -> None:
    async def stow(request: Request, principal: Principal, study: str | None) -> JSONResponse:
        if study is not None and not _is_uid(study):
            raise Problem(400, "the study in the path is not a valid UID")
        got = await intake.receive(request, ctx, principal, multipart_allowed=True, study_uid=study)
        if not got.outcomes:
            raise Problem(400, "no instance in the body")
        status, body = await to_thread.run_sync(store_response, got, study)
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    @app.post("/dicomweb/studies", response_class=JSONResponse)
    async def stow_studies(request: Request, principal: Principal = submit_scope) -> JSONResponse:
        """STOW-RS: store instances of any studies."""
        _multipart_only(request)
        return await stow(request, principal, None)

    @app.post("/dicomweb/studies/{study}", response_class=JSONResponse)
    async def stow_study(request: Request, study: str,
                         principal: Principal = submit_scope) -> JSONResponse:
        """STOW-RS: store instances of one study (others fail with 0xA900)."""
        _multipart_only(request)
        return await stow(request, principal, study)


def _multipart_only(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/related":
        raise Problem(415, 'STOW-RS takes multipart/related; type="application/dicom" '
                      f"(not {media or 'no content type'})")
