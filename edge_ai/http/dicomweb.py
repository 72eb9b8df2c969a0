"""DICOMweb STOW-RS (PS3.18 10.5): multipart/related; type="application/dicom" in, the Store Instances
Response Module out as application/dicom+json: Referenced SOP Sequence for what was stored, Failed SOP
Sequence with a Failure Reason (PS3.4 B.2.3) for what was not. 200 all stored, 202 some, 409 none."""

from __future__ import annotations

import json
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from starlette.responses import Response

from edge_ai.http import intake
from edge_ai.http.auth import Principal
from edge_ai.http.context import HttpContext
from edge_ai.http.problems import REFUSAL_ANSWERS, Problem

DICOM_JSON = "application/dicom+json"
_UID_CHARS = frozenset("0123456789.")


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if _is_uid(value) else {"vr": "UI"}


def store_response(got: intake.Intake, study_uid: str | None) -> tuple[int, str]:
    """The PS3.18 response body (DICOM JSON text, written item by item: a request may carry thousands of
    instances) and its status."""
    failed = [json.dumps({"00081150": _uid(o.sop_class_uid), "00081155": _uid(o.sop_instance_uid),
                          "00081197": {"vr": "US", "Value": [REFUSAL_ANSWERS[o.refusal.kind][1]]}})
              for o in got.failed if o.refusal is not None]
    referenced = [json.dumps({"00081150": _uid(o.sop_class_uid), "00081155": _uid(o.sop_instance_uid)})
                  for o in got.stored]
    members = []
    if failed:  # attributes in tag order: (0008,1198), (0008,1199), (0020,000D)
        members.append('"00081198":{"vr":"SQ","Value":[' + ",".join(failed) + "]}")
    if referenced:
        members.append('"00081199":{"vr":"SQ","Value":[' + ",".join(referenced) + "]}")
    if study_uid is not None:
        members.append('"0020000D":' + json.dumps(_uid(study_uid)))
    status = 200 if not failed else 202 if referenced else 409
    return status, "{" + ",".join(members) + "}"


def _is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and set(text) <= _UID_CHARS


def add_routes(app: FastAPI, ctx: HttpContext, submit_scope: Any) -> None:
    async def stow(request: Request, principal: Principal, study: str | None) -> Response:
        if study is not None and not _is_uid(study):
            raise Problem(400, "the study in the path is not a valid UID")
        got = await intake.receive(request, ctx, principal, multipart_allowed=True, study_uid=study)
        if not got.outcomes:
            raise Problem(400, "no instance in the body")
        status, body = await to_thread.run_sync(store_response, got, study)
        return Response(body, status_code=status, media_type=DICOM_JSON)

    stow_body = {"requestBody": {"required": True, "content": {'multipart/related; type="application/dicom"': {
        "schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/dicomweb/studies", response_class=Response, openapi_extra=stow_body)
    async def stow_studies(request: Request, principal: Principal = submit_scope) -> Response:
        """STOW-RS: store instances of any studies."""
        _multipart_only(request)
        return await stow(request, principal, None)

    @app.post("/dicomweb/studies/{study}", response_class=Response, openapi_extra=stow_body)
    async def stow_study(request: Request, study: str,
                         principal: Principal = submit_scope) -> Response:
        """STOW-RS: store instances of one study (others fail with 0xA900)."""
        _multipart_only(request)
        return await stow(request, principal, study)


def _multipart_only(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/related":
        raise Problem(415, 'STOW-RS takes multipart/related; type="application/dicom" '
                      f"(not {media or 'no content type'})")
