"""Command line: parse, load config, call the app, map errors to exit codes with one-line messages."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from edge_ai import __version__, loop_cli
from edge_ai import config as config_mod
from edge_ai.errors import ConfigError, EdgeAIError, ModelError

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-ai", description="edge_ai DICOM edge appliance")
    p.add_argument("--version", action="version", version=f"edge-ai {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=None,
                        help="config file (default: $EDGE_AI_CONFIG, then config/edge-ai.yaml)")

    with_config(sub.add_parser("serve", help="run the node in the foreground"))
    with_config(sub.add_parser("check-config", help="validate the config and every model it names"))
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the audit log's hash chain, seals and segments")
    verify.add_argument("--fast", action="store_true",
                        help="check from the newest recorded seal only (default: every line of every segment)")
    with_config(verify)
    model = sub.add_parser("model", help="model package tools")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    validate = model_sub.add_parser("validate", help="check a package's hash and run its self-test")
    validate.add_argument("path", type=Path)
    validate.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    build = model_sub.add_parser("build-engine", help="build and cache the TensorRT engine for this GPU")
    build.add_argument("path", type=Path)
    with_config(build)
    with_config(sub.add_parser("status", help="queue depth by state, last results, dead letters"))
    apikey = sub.add_parser("apikey", help="API keys for the HTTP API (only their hashes are kept)")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_sub.add_parser("create", help="make a key; it is printed once, alone on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: submit,read,feedback,admin")
    with_config(create)
    with_config(apikey_sub.add_parser("list", help="name, scopes, created, last used (never the key)"))
    revoke = apikey_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    with_config(revoke)
    loop_cli.add_parsers(sub, model_sub, with_config)
    return p


def _load(path: Path | None) -> config_mod.Config:
    return config_mod.load(config_mod.resolve_path(path))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"edge-ai: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except EdgeAIError as exc:
        print(f"edge-ai: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


def _dispatch(args: argparse.Namespace) -> int:
    done = loop_cli.dispatch(args)
    if done is not None:
        return done
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "audit":
        return _audit_verify(args.config, args.fast)
    if args.command == "model" and args.model_command == "validate":
        return _model_validate(args.path, args.runtime)
    if args.command == "model" and args.model_command == "build-engine":
        return _build_engine(args.path, args.config)
    if args.command == "status":
        return _status(args.config)
    if args.command == "apikey":
        return _apikey(args)
    raise AssertionError(args.command)


def _serve(path: Path | None) -> int:
    from edge_ai.service.memory import one_arena

    one_arena()  # before anything can start a thread: what one thread frees, the next reuses (service/memory.py)
    from edge_ai.app import App
    from edge_ai.observability import logging as obs_logging

    cfg = _load(path)
    obs_logging.configure()
    app = App(cfg)
    app.install_signals()
    return app.run()


def _check_config(path: Path | None) -> int:
    from edge_ai.service.model_loading import load_models

    cfg = _load(path)
    _check_tls(cfg)
    _check_audit(cfg)
    _check_http(cfg)
    served, checks = load_models(cfg)
    for c in checks:
        mark = "ok" if c.ok else "FAILED"
        print(f"model {c.name}: {mark} ({c.runtime + ', ' if c.runtime else ''}{c.detail})")
    routed = {m for r in cfg.routing or [] for m in r.model_names}
    missing = sorted(routed - {c.name for c in checks if c.ok})
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"edge-ai: invalid configuration: models: {failed[0].detail}", file=sys.stderr)
        return EXIT_INVALID
    if missing:
        print(f"edge-ai: invalid configuration: routing: model {missing[0]!r} is not among the models",
              file=sys.stderr)
        return EXIT_INVALID
    print(f"{cfg.source}: valid ({len(served)} models, {len(cfg.destinations or [])} destinations)")
    return EXIT_OK


def _check_tls(cfg: config_mod.Config) -> None:
    """Build every TLS context the node would build, so a missing or unreadable certificate, key or CA
    fails here, naming its key, rather than at `serve` or at the first delivery.

    Raises:
        ConfigError: naming the TLS block that does not load.
    """
    import ssl

    from edge_ai.dicom.scu import client_tls_context
    from edge_ai.dicom.tls import server_context

    if cfg.node.tls.enabled:
        server_context(cfg.node.tls)
    for dest in cfg.destinations or []:
        tls = getattr(dest, "tls", None)
        if tls is not None and tls.enabled:
            try:
                client_tls_context(tls)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"destinations[{dest.name}].tls: cannot load: {exc}") from exc


def _check_http(cfg: config_mod.Config) -> None:
    """The HTTP API's secret files (TLS key, key-hash secret, JWKS) and key store load, or the key is named.

    Raises:
        ConfigError: naming the http.* key whose file is missing, unreadable or unusable.
    """
    if not cfg.http.enabled:
        return
    from edge_ai.http.server import build_auth, tls_context

    tls_context(cfg)
    if cfg.http.auth.hmac_key_file is not None or cfg.api_key_secret_path.exists():
        build_auth(cfg)  # an unset secret that does not exist yet is made at first start: nothing to check
    elif cfg.http.auth.jwt is not None:
        from edge_ai.http.auth import JwtVerifier

        JwtVerifier(cfg.http.auth.jwt)


def _apikey(args: argparse.Namespace) -> int:
    from edge_ai.http.auth import ApiKeys, read_secret

    cfg = _load(args.config)
    keys = ApiKeys(cfg.api_keys_path, read_secret(cfg.api_key_secret_path,
                                                       create=cfg.http.auth.hmac_key_file is None))
    if args.apikey_command == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        try:
            key = keys.create(args.name, scopes)
        except ValueError as exc:
            print(f"edge-ai: {exc}", file=sys.stderr)
            return EXIT_INVALID
        print(f"API key {args.name!r} created with scopes {','.join(sorted(set(scopes)))}. "
              "It is shown this once and kept only as a hash; use it as: Authorization: Bearer <key>")
        print(key)
        return EXIT_OK
    if args.apikey_command == "revoke":
        if not keys.revoke(args.name):
            print(f"edge-ai: no API key named {args.name!r}", file=sys.stderr)
            return EXIT_FAIL
        print(f"API key {args.name!r} revoked")
        return EXIT_OK
    for k in keys.list():
        used = _when(k["last_used"]) if k["last_used"] else "never"
        print(f"{k['name']}\tscopes={','.join(k['scopes'])}\tcreated={_when(k['created'])}\tlast_used={used}"
              f"\tprefix=eai_{k['prefix']}")
    return EXIT_OK


def _when(t: object) -> str:
    return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds") if isinstance(t, int | float) else "?"


def _check_audit(cfg: config_mod.Config) -> None:
    """The seal key (when configured: it is never made for a named file) and the ATNA TLS files.

    Raises:
        ConfigError: naming audit.seal_key_file or audit.atna.tls.
    """
    import ssl

    from edge_ai.observability.atna_sender import client_context
    from edge_ai.observability.audit_seals import load_key

    if cfg.audit.seal_key_file is not None:
        load_key(cfg.audit.seal_key_file, cfg.storage.root, create=False)
    if cfg.audit.atna is not None:
        try:
            client_context(cfg.audit.atna)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"audit.atna.tls: cannot load: {exc}") from exc


def _audit_verify(path: Path | None, fast: bool) -> int:
    from edge_ai.observability.audit_seals import load_key, open_readonly
    from edge_ai.observability.audit_trail import seals_path
    from edge_ai.observability.audit_verify import verify

    cfg = _load(path)
    key = load_key(cfg.audit.seal_key_file, cfg.storage.root, create=False)
    store = open_readonly(seals_path(cfg))
    try:
        result = verify(cfg.audit_path, key, store, fast=fast)
    finally:
        if store is not None:
            store.close()
    if result.ok:
        print(f"{cfg.audit_path}: intact ({result.mode}: {result.lines} lines, {result.seals} seals verified, "
              f"{result.unsealed} lines after the last seal)")
        return EXIT_OK
    where = result.segment or "log"
    if result.bad_line:
        where += f" line {result.bad_line}"
    if result.bad_seq:
        where += f" (seq {result.bad_seq})"
    print(f"{cfg.audit_path}: broken at {where}: {result.reason}")
    return EXIT_FAIL


def _model_validate(path: Path, runtime: str) -> int:
    from edge_ai.inference.engine import load_engine, self_test
    from edge_ai.inference.package import load_package

    try:
        pkg = load_package(path)
        engine = load_engine(pkg, runtime)
    except ModelError as exc:
        print(f"edge-ai: model invalid: {exc}", file=sys.stderr)
        return EXIT_FAIL
    ok, detail = self_test(engine)
    print(f"{pkg.name} {pkg.version}: sha256 ok; self-test on {engine.runtime}: {'pass' if ok else 'FAIL'} ({detail})")
    return EXIT_OK if ok else EXIT_FAIL


def _build_engine(path: Path, config_path: Path | None) -> int:
    from edge_ai.inference.engine import backends
    from edge_ai.inference.package import load_package
    from edge_ai.inference.tensorrt import TensorRTBackend

    backend = backends()["tensorrt"]
    assert isinstance(backend, TensorRTBackend)
    ok, why = backend.available()
    if not ok:
        print(f"edge-ai: cannot build a TensorRT engine here: {why}", file=sys.stderr)
        return EXIT_FAIL
    cfg = _load(config_path)
    pkg = load_package(path)
    key, plan, built = backend.build(pkg, cfg.storage.root / "engines")
    print(f"{pkg.name} {pkg.version}: engine {'built' if built else 'already cached'} at {plan} "
          f"({key.gpu_name}, sm {key.compute_capability}, TensorRT {key.tensorrt_version}, {key.precision})")
    return EXIT_OK


def _status(path: Path | None) -> int:
    from edge_ai.service import status as node_status
    from edge_ai.service.stores import FILENAME, open_stores

    cfg = _load(path)
    db = cfg.storage.root / FILENAME
    if not db.exists():
        print(f"no spool at {db} yet (the node has not run with this config)")
        return EXIT_OK
    stores = open_stores(cfg.storage.root)
    try:
        counts = stores.jobs.counts()
        print("jobs by state: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        print("last results:")
        for r in stores.jobs.recent_reports():
            when = datetime.fromtimestamp(float(r["created_at"]), UTC).isoformat(timespec="seconds")  # type: ignore[arg-type]
            verdict = "POSITIVE" if r["positive"] else "negative"
            print(f"  {when} series {r['series_uid']} {r['model_name']} {r['model_version']} ({r['runtime']}): "
                  f"{verdict} p={float(r['probability']):.3f}")  # type: ignore[arg-type]
        dead = stores.deliveries.dead_letters()
        print(f"dead letters: {len(dead)}")
        for d in dead:
            print(f"  {d['destination']}: SR {d['sop_instance_uid']} after {d['attempts']} attempts: {d['reason']}")
        for f in stores.jobs.failed_jobs():
            print(f"failed job {f['id']} series {f['series_uid']}: {f['reason']}")
    finally:
        stores.close()
    # runtime and drift per model: only the running node knows them; it leaves a snapshot every few seconds
    snapshot = node_status.read(cfg.storage.root / node_status.FILENAME)
    if snapshot is None:
        print("models: no status snapshot (the node has not run with this config)")
    else:
        print("\n".join(node_status.render_models(snapshot)))
    from edge_ai.observability.audit_status import render

    print("\n".join(render(cfg)))
    return EXIT_OK
