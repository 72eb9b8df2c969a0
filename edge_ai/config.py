"""Typed configuration (SPEC "Configuration"): pydantic models, unknown keys rejected, one load()."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_ai.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
DEFAULT_CONFIG = Path("config/edge-ai.yaml")
_DESTINATION_TYPES = ("folder", "dicom")  # discriminator tags pydantic puts into error locations

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters (no backslash), not all spaces")
    return value.strip()


def _check_optional_ae(value: str | None) -> str | None:
    return None if value is None else _check_ae(value)


AETitle = Annotated[str, Field(min_length=1, max_length=16)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Section):
    acse: float = Field(30, gt=0, le=600)
    dimse: float = Field(60, gt=0, le=3600)
    network: float = Field(60, gt=0, le=3600)
    # a peer that sends nothing for this long in the middle of a PDU (or before its first PDU) is dropped
    socket: float = Field(30, gt=0, le=30)
    tls_handshake: float = Field(10, gt=0, le=10)


class TLS(_Section):
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = True

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLS:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required when enabled is true")
        return self


class AllowedCaller(_Section):
    ae_title: AETitle
    hosts: list[str] = Field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    # how this caller delivers: "series" (whole series per association: complete at release) or
    # "instances" (one or a few per association: complete after grouping.quiet_window_s); unset = instances
    sends: Literal["series", "instances"] | None = None

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("hosts")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for host in value:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError as exc:
                raise ValueError(f"{host!r} is not an IP address or CIDR network") from exc
        return value


class Node(_Section):
    ae_title: AETitle = "EDGE_AI"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(16, ge=1, le=1024)
    max_pdu_length: int = Field(262144, ge=4096, le=16 * 1024 * 1024)
    timeouts: Timeouts = Timeouts()
    tls: TLS = TLS()
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)

    _ae = field_validator("ae_title")(_check_ae)


class Storage(_Section):
    root: Path = Path("../var")
    min_free_bytes: int = Field(2 * 1024**3, ge=0)
    # Rows x Columns x Frames x SamplesPerPixel x BitsAllocated/8 (or the encoded size) above this is
    # refused before any decode; 1 GiB holds a 1000-frame 512 x 512 16-bit Enhanced CT (500 MiB) twice
    # over, and the worker decodes one frame at a time, so memory does not follow it
    max_instance_bytes: int = Field(1024**3, ge=1024 * 1024, le=16 * 1024**3)
    # received images of a series are deleted this long after its last job was delivered; 0 keeps them
    retention_days: float = Field(7, ge=0, le=3650)


class Grouping(_Section):
    # a series still on an open association completes after this much silence
    series_timeout_s: float = Field(10, gt=0, le=86400)
    # after the release of a series' last association, this much quiet (no new instance, no new association
    # for it) completes it, unless its caller declared sends: series (then: at release); never longer than
    # series_timeout_s
    quiet_window_s: float = Field(2.0, ge=0, le=600)
    # a series whose last association ended without release (A-ABORT, dropped), or that was arriving when
    # the node restarted, completes after this much silence: the sender usually sends again first
    aborted_timeout_s: float = Field(60, gt=0, le=86400)


class ModelRef(_Section):
    path: Path
    runtime: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    agreement_window: int = Field(50, ge=1, le=100000)  # reader verdicts the agreement figure is taken over
    min_agreement: float = Field(0.8, ge=0, le=1)  # below it (window full): model.agreement_low


class Range(_Section):
    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class RouteMatch(_Section):
    """Every key given must match (and); within a list, any value matches (or)."""

    Modality: list[str] | None = None
    BodyPartExamined: list[str] | None = None
    SOPClassUID: list[str] | None = None
    SeriesDescription: str | None = None  # regular expression, searched
    ImageType: list[str] | None = None  # each value listed must be present, e.g. [ORIGINAL, AXIAL]
    SliceThickness: Range | None = None  # millimetres, inclusive

    @field_validator("SeriesDescription")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Route(_Section):
    name: str
    match: RouteMatch
    model: str | None = None
    models: list[str] | None = None  # several models for the same series, one SR each
    destinations: list[str] | None = None

    @model_validator(mode="after")
    def _one_model_key(self) -> Route:
        if (self.model is None) == (self.models is None):
            raise ValueError("give exactly one of model or models")
        return self

    @property
    def model_names(self) -> list[str]:
        return [self.model] if self.model is not None else list(self.models or [])


class RetryPolicy(_Section):
    attempts: int = Field(8, ge=1, le=1000)
    initial_s: float = Field(1.0, gt=0)
    max_s: float = Field(300.0, gt=0)


class FolderDestination(_Section):
    name: str
    type: Literal["folder"]
    path: Path
    retry: RetryPolicy = RetryPolicy()


class DicomDestination(_Section):
    name: str
    type: Literal["dicom"]
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle | None = None
    tls: TLS = TLS()
    timeout_s: float = Field(30, gt=0)
    retry: RetryPolicy = RetryPolicy()

    _ae = field_validator("ae_title")(_check_ae)
    _calling_ae = field_validator("calling_ae_title")(_check_optional_ae)


Destination = Annotated[FolderDestination | DicomDestination, Field(discriminator="type")]


class AtnaTLS(_Section):
    ca_certificates: Path | None = None  # unset: the system's trusted CAs
    certificate: Path | None = None  # with private_key: mutual TLS
    private_key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> AtnaTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (mutual TLS) or not at all")
        return self


class Atna(_Section):
    """The hospital's Audit Record Repository: syslog over TLS (RFC 5425)."""

    host: str = Field(min_length=1)
    port: int = Field(6514, ge=1, le=65535)
    tls: AtnaTLS = AtnaTLS()


class Audit(_Section):
    path: Path | None = None  # default: <storage.root>/audit/audit.jsonl
    # 0: fsync every line before going on; above 0: fsync in groups within this many milliseconds
    fsync_interval_ms: int = Field(20, ge=0, le=1000)
    seal_key_file: Path | None = None  # unset: <storage.root>/keys/audit-seal.key, made at first start
    seal_every: int = Field(100, ge=1, le=1_000_000)
    segment_bytes: int = Field(64 * 1024**2, ge=4096, le=16 * 1024**3)
    retention_days: float = Field(2190, gt=0, le=36500)
    atna: Atna | None = None


class Metrics(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class Drift(_Section):
    window: int = Field(50, ge=5)
    threshold: float = Field(0.25, gt=0)


class HttpTLS(TLS):
    require_client_certificate: bool = False


class Jwt(_Section):
    """OAuth 2.0 access tokens (JWTs) checked offline against a JWKS file."""

    jwks_file: Path
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)


class HttpAuth(_Section):
    api_keys: Path | None = None  # hashes only; managed by `edge-ai apikey` (unset: storage.root/api-keys.json)
    # secret the key hashes are keyed with (unset: made at first use under storage.root, 0600)
    hmac_key_file: Path | None = None
    jwt: Jwt | None = None
    # failed authentications one peer may make per minute before it is refused (429) for that minute
    max_failures_per_minute: int = Field(10, ge=1, le=10000)


class Http(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    tls: HttpTLS = HttpTLS()
    max_request_bytes: int = Field(4 * 1024**3, ge=1024)
    auth: HttpAuth = HttpAuth()


class Export(_Section):
    # secret for consistent UID/ID pseudonyms; unset: storage.root/export-hmac.key, made at first use (0600)
    hmac_key_file: Path | None = None


class Config(_Section):
    node: Node = Node()
    storage: Storage = Storage()
    grouping: Grouping = Grouping()
    models: list[ModelRef] | None = None
    routing: list[Route] | None = None
    destinations: list[Destination] | None = None
    audit: Audit = Audit()
    metrics: Metrics = Metrics()
    drift: Drift = Drift()
    export: Export = Export()
    http: Http = Http()
    # set by load(): where relative paths were resolved from, and the file's hash for the audit
    source: Path | None = Field(default=None, exclude=True)
    sha256: str = Field(default="", exclude=True)

    @property
    def audit_path(self) -> Path:
        return self.audit.path or self.storage.root / "audit" / "audit.jsonl"

    @property
    def api_keys_path(self) -> Path:
        return self.http.auth.api_keys or self.storage.root / "api-keys.json"

    @property
    def api_key_secret_path(self) -> Path:
        return self.http.auth.hmac_key_file or self.storage.root / "api-keys.hmac"

    @model_validator(mode="after")
    def _names(self) -> Config:
        if self.destinations is not None:
            names = [d.name for d in self.destinations]
            if len(set(names)) != len(names):
                raise ValueError("destinations: names must be unique")
        if self.routing is not None:
            # with the section left out, load() adds the embedded default: the "results" folder
            known = {d.name for d in self.destinations} if self.destinations is not None else {"results"}
            for i, route in enumerate(self.routing):
                for dest in route.destinations or []:
                    if dest not in known:
                        raise ValueError(f"routing.{i}.destinations: unknown destination {dest!r}")
        return self


def default_models() -> list[ModelRef]:
    return [ModelRef(path=MODELS_DIR / "demo_chest_xr"), ModelRef(path=MODELS_DIR / "demo_ct")]


def default_routing() -> list[Route]:
    return [
        Route(name="chest", match=RouteMatch(Modality=["DX", "CR"]), model="demo-chest-xr"),
        Route(name="ct", match=RouteMatch(Modality=["CT"]), model="demo-ct-lesion"),
    ]


def resolve_path(config_path: Path | None) -> Path:
    """--config, else $EDGE_AI_CONFIG, else config/edge-ai.yaml."""
    if config_path is not None:
        return config_path
    env = os.environ.get("EDGE_AI_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load(path: Path) -> Config:
    """Load, validate and resolve a config file.

    Raises:
        ConfigError: with the offending key in the message.
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        raw: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc
    cfg = _resolved(cfg, path.resolve().parent)
    cfg.source = path.resolve()
    cfg.sha256 = hashlib.sha256(text).hexdigest()
    return cfg


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in _user_loc(err["loc"])) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _user_loc(loc: tuple[int | str, ...]) -> list[int | str]:
    """The key path as written in the file: drop the union tag pydantic inserts after destinations.N."""
    parts = list(loc)
    tagged = len(parts) > 2 and parts[0] == "destinations" and isinstance(parts[1], int)
    if tagged and parts[2] in _DESTINATION_TYPES:
        del parts[2]
    return parts


def _resolved(cfg: Config, base: Path) -> Config:
    def rel(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    cfg.storage.root = rel(cfg.storage.root)
    cfg.audit.path = rel(cfg.audit.path) if cfg.audit.path else cfg.storage.root / "audit" / "audit.jsonl"
    if cfg.audit.seal_key_file is not None:
        cfg.audit.seal_key_file = rel(cfg.audit.seal_key_file)
    if cfg.audit.atna is not None:
        for attr in ("certificate", "private_key", "ca_certificates"):
            value = getattr(cfg.audit.atna.tls, attr)
            if value is not None:
                setattr(cfg.audit.atna.tls, attr, rel(value))
    if cfg.export.hmac_key_file is not None:
        cfg.export.hmac_key_file = rel(cfg.export.hmac_key_file)
    auth = cfg.http.auth
    auth.api_keys = rel(auth.api_keys) if auth.api_keys else cfg.storage.root / "api-keys.json"
    auth.hmac_key_file = rel(auth.hmac_key_file) if auth.hmac_key_file else None
    if auth.jwt is not None:
        auth.jwt.jwks_file = rel(auth.jwt.jwks_file)
    tls_blocks: list[TLS] = [cfg.node.tls, cfg.http.tls]
    for tls in tls_blocks + [d.tls for d in cfg.destinations or [] if isinstance(d, DicomDestination)]:
        for attr in ("certificate", "private_key", "ca_certificates"):
            value = getattr(tls, attr)
            if value is not None:
                setattr(tls, attr, rel(value))
    if cfg.models is None:
        cfg.models = default_models()
    else:
        for m in cfg.models:
            m.path = rel(m.path)
    if cfg.routing is None:
        cfg.routing = default_routing()
    if cfg.destinations is None:
        cfg.destinations = [FolderDestination(name="results", type="folder", path=cfg.storage.root / "results")]
    else:
        for d in cfg.destinations:
            if isinstance(d, FolderDestination):
                d.path = rel(d.path)
    return cfg
