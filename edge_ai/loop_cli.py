"""Command line of the drift loop: export, model install/promote/rollback/list, feedback.

Parsing and exit codes only (cli.py's conventions: 0 done; 1 invalid or unknown; 2 bad arguments);
the work is in export/, inference/versions.py and observability/agreement.py. Audit events go
through observability.pending, so the running node stays the audit log's one writer; a change of
the live or shadow version signals that node (SIGHUP) to pick it up without a restart.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge_ai import config as config_mod
from edge_ai.errors import ModelError

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                model_sub: argparse._SubParsersAction[argparse.ArgumentParser],
                with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    export = sub.add_parser("export", help="de-identified copies of selected series and a manifest, for retraining")
    export.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    export.add_argument("--since", help="jobs created at or after this time (ISO 8601; UTC unless it says)")
    export.add_argument("--until", help="jobs created at or before this time (ISO 8601)")
    export.add_argument("--reason", default="all", help="drift,disagreement,failed or all (default all)")
    with_config(export)
    install = model_sub.add_parser("install", help="validate a package and keep it as a new version")
    install.add_argument("path", type=Path)
    install.add_argument("--shadow", action="store_true", help="run it beside the live version, never delivered")
    with_config(install)
    promote = model_sub.add_parser("promote", help="make a kept version live")
    promote.add_argument("name")
    promote.add_argument("version")
    with_config(promote)
    rollback = model_sub.add_parser("rollback", help="return to the previous live version")
    rollback.add_argument("name")
    with_config(rollback)
    with_config(model_sub.add_parser("list", help="kept versions and their states"))
    feedback = sub.add_parser("feedback", help="record a reader's verdict on a job (the offline path of the API)")
    feedback.add_argument("job", type=int)
    verdict = feedback.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--agree", action="store_true")
    verdict.add_argument("--disagree", action="store_true")
    feedback.add_argument("--comment", default="")
    feedback.add_argument("--principal", default=os.environ.get("USER", "cli"))
    with_config(feedback)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run a drift-loop command; None when `args` is not one."""
    if args.command == "export":
        return _export(args)
    if args.command == "feedback":
        return _feedback(args)
    if args.command == "model" and args.model_command in ("install", "promote", "rollback", "list"):
        return _model(args)
    return None


def parse_time(text: str) -> float:
    """ISO 8601 date or date-time; without a zone it is UTC.

    Raises:
        ValueError: not such a time.
    """
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _export(args: argparse.Namespace) -> int:
    from edge_ai.export.deid import load_or_create_key
    from edge_ai.export.manifest import export
    from edge_ai.export.selection import REASONS
    from edge_ai.observability import pending

    reasons = {r.strip() for r in str(args.reason).split(",") if r.strip()}
    unknown = sorted(reasons - set(REASONS))
    if not reasons or unknown:
        return _bad(f"--reason: unknown {', '.join(unknown) or '(none)'}; use {','.join(REASONS)}")
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        return _bad(f"--since/--until: {exc}")
    if since is not None and until is not None and since > until:
        return _bad("--since is after --until")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _bad(f"--out {out}: exists and is not an empty folder")
    cfg = config_mod.load(config_mod.resolve_path(args.config))
    db = cfg.storage.root / "spool" / "queue.sqlite3"
    if not db.exists():
        return _bad(f"no spool at {db} yet (the node has not run with this config)")
    key = load_or_create_key(cfg.export.hmac_key_file or cfg.storage.root / "export-hmac.key")
    summary = export(db, out, key, reasons, since, until)
    pending.submit(cfg.storage.root, cfg.audit_path, "export.done", out=str(out.resolve()),
                   reasons=sorted(reasons), series=summary.series, instances=summary.instances,
                   burned_in_left_out=summary.burned_in_left_out, unreadable_left_out=summary.unreadable_left_out,
                   by_reason=summary.by_reason)
    print(f"exported {summary.series} series, {summary.instances} instances to {out}; left out: "
          f"{summary.burned_in_left_out} with burned-in annotation, {summary.unreadable_left_out} unreadable")
    return EXIT_OK


def _model(args: argparse.Namespace) -> int:
    from edge_ai.inference.versions import ModelStore
    from edge_ai.observability import pending

    cfg = config_mod.load(config_mod.resolve_path(args.config))
    store = ModelStore(cfg.storage.root / "models")
    root, audit_path = cfg.storage.root, cfg.audit_path
    try:
        if args.model_command == "list":
            return _list(cfg, store)
        if args.model_command == "install":
            pkg = _validated(args.path)
            pkg, state = store.install(args.path, shadow=args.shadow)
            role = "shadow" if args.shadow else "live"
            pending.submit(root, audit_path, "model.installed", model=pkg.name, version=pkg.version,
                           sha256=pkg.sha256, role=role, live=state.live, shadow=state.shadow)
            print(f"{pkg.name} {pkg.version}: installed as {role}")
            name = pkg.name
        elif args.model_command == "promote":
            state = store.promote(args.name, args.version)
            previous = state.history[-1] if state.history else None
            pending.submit(root, audit_path, "model.promoted", model=args.name, version=args.version,
                           previous=previous or _configured(cfg, args.name))
            print(f"{args.name} {args.version}: live")
            name = args.name
        else:
            was, state = store.rollback(args.name)
            pending.submit(root, audit_path, "model.rolled_back", model=args.name,
                           from_version=was or _configured(cfg, args.name),
                           to_version=state.live or _configured(cfg, args.name))
            print(f"{args.name}: rolled back from {was} to {state.live or 'the configured package'}")
            name = args.name
    except ModelError as exc:
        print(f"edge-ai: {exc}", file=sys.stderr)
        return EXIT_FAIL
    _signal_node(root, name)
    return EXIT_OK


def _validated(path: Path) -> object:
    """Hash and self-test, as `edge-ai model validate` does, before anything is kept."""
    from edge_ai.inference.engine import load_engine, self_test
    from edge_ai.inference.package import load_package

    pkg = load_package(path)
    engine = load_engine(pkg, "auto")
    try:
        ok, detail = self_test(engine)
    finally:
        engine.close()
    if not ok:
        raise ModelError(f"{pkg.name} {pkg.version}: self-test failed: {detail}")
    return pkg


def _list(cfg: config_mod.Config, store: object) -> int:
    from edge_ai.inference.package import load_package
    from edge_ai.inference.versions import ModelStore

    assert isinstance(store, ModelStore)
    configured = {}
    for ref in cfg.models or []:
        try:
            pkg = load_package(ref.path, verify_hash=False)
        except ModelError:
            continue
        configured[pkg.name] = pkg.version
    for name in sorted(set(configured) | set(store.names())):
        state = store.state(name)
        if name in configured:
            mark = "live" if state.live is None else "configured"
            print(f"{name} {configured[name]} (configured package): {mark}")
        for version in store.versions(name):
            marks = [m for m, on in (("live", state.live == version), ("shadow", state.shadow == version),
                                     ("previous", bool(state.history) and state.history[-1] == version)) if on]
            print(f"{name} {version}: {', '.join(marks) or 'kept'}")
    return EXIT_OK


def _configured(cfg: config_mod.Config, name: str) -> str:
    """How the audit names the configured package of `name` (the version the node falls back to)."""
    from edge_ai.inference.package import load_package

    for ref in cfg.models or []:
        try:
            pkg = load_package(ref.path, verify_hash=False)
        except ModelError:
            continue
        if pkg.name == name:
            return f"{pkg.version} (configured package)"
    return "(configured package)"


def _signal_node(root: Path, name: str) -> None:
    from edge_ai.observability import pending

    pid = pending.node_pid(root)
    if pid is None:
        print(f"no running node: {name} takes effect at its next start")
        return
    os.kill(pid, signal.SIGHUP)
    print(f"node {pid} reloading")


def _feedback(args: argparse.Namespace) -> int:
    """Stores the verdict; the running node audits it and updates the agreement within a second."""
    from edge_ai.observability.agreement import FeedbackError, connect, store_feedback

    cfg = config_mod.load(config_mod.resolve_path(args.config))
    db_path = cfg.storage.root / "spool" / "queue.sqlite3"
    if not db_path.exists():
        return _bad(f"no spool at {db_path} yet")
    db = connect(db_path)
    try:
        fid = store_feedback(db, args.job, bool(args.agree), [], args.comment, args.principal)
    except FeedbackError as exc:
        print(f"edge-ai: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        db.close()
    print(f"feedback {fid} on job {args.job}: {'agree' if args.agree else 'disagree'}")
    return EXIT_OK


def _bad(message: str) -> int:
    print(f"edge-ai: {message}", file=sys.stderr)
    return EXIT_INVALID
