"""CLI: ``witness run|alerts`` and ``audit export|verify``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from streamledger.errors import ConfigError, FormatError, VerificationError


def add_parsers(sub: argparse._SubParsersAction, trust_args: Callable[..., None]) -> None:
    witness = sub.add_parser("witness", help="cosign checkpoints as an independent witness")
    wsub = witness.add_subparsers(dest="witness_command", metavar="ACTION")
    wsub.required = True
    run = wsub.add_parser(
        "run", help="check new checkpoints against the ledger data, cosign or refuse them"
    )
    run.add_argument("--ledger", required=True, help="the ledger to witness")
    run.add_argument("--key", required=True, help="this witness's cosigning key name")
    run.add_argument(
        "--log-vkey",
        action="append",
        required=True,
        help="the log's verifier key you trust (text or file); repeatable",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the witness keeps what it cosigned (default DATA_DIR/witness)",
    )
    run.add_argument("--once", action="store_true", help="handle what is there, then exit")
    run.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls (default 5)"
    )
    alerts = wsub.add_parser("alerts", help="print the refusals witnesses published")
    alerts.add_argument("ledger")
    alerts.add_argument("--partition", "-p", type=int, default=None)
    alerts.add_argument("--json", action="store_true", help="one JSON alert per line")

    audit = sub.add_parser("audit", help="audit bundles: export for, and check by, an auditor")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    export = asub.add_parser(
        "export", help="one file with entries, inclusion proofs and a cosigned checkpoint"
    )
    export.add_argument("ledger")
    export.add_argument("--partition", "-p", type=int, required=True)
    export.add_argument(
        "--seq", type=int, action="append", required=True, help="entry to include; repeatable"
    )
    export.add_argument(
        "--hashes-only", action="store_true", help="only leaf and payload hashes, no contents"
    )
    export.add_argument(
        "--membership", type=Path, help="JSON membership document in force to include"
    )
    export.add_argument("--output", "-o", type=Path, required=True, help="bundle file")
    trust_args(export)
    verify = asub.add_parser("verify", help="check an audit bundle offline with your own keys")
    verify.add_argument("file", type=Path, help="the bundle file")
    trust_args(verify, vkey_required=True)
    verify.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace) -> int:
    from streamledger.cli.commands import (
        EXIT_OK,
        EXIT_TAMPERED,
        data_dir,
        key_store,
        open_backend,
        trust_policy,
    )
    from streamledger.keys import load_vkey
    from streamledger.ledger import Ledger

    if args.command == "witness":
        backend = open_backend(args)
        try:
            if args.witness_command == "alerts":
                ledger = Ledger(backend, args.ledger)
                found = ledger.alerts(args.partition)
                for alert in found:
                    if args.json:
                        print(json.dumps(alert.to_json(), sort_keys=True))
                    else:
                        print(
                            f"{alert.ledger}/{alert.partition}: witness {alert.witness_name} "
                            f"refused a checkpoint ({alert.reason}): {alert.detail}"
                        )
                        print("  cosigned checkpoint:")
                        print(_indent(alert.cosigned or "(none yet)\n"))
                        print("  refused checkpoint:")
                        print(_indent(alert.refused))
                if not args.json:
                    print(f"{len(found)} alert(s)", file=sys.stderr)
                return EXIT_TAMPERED if found else EXIT_OK
            from streamledger.services.witness import Witness, main_loop

            key = key_store(args).load(args.key)
            log_keys = [load_vkey(v) for v in args.log_vkey]
            if args.interval <= 0:
                raise ConfigError("--interval must be positive")
            state_dir = args.state_dir or data_dir(args) / "witness"
            witness = Witness(backend, args.ledger, key, log_keys, state_dir, out=sys.stderr)
            refused = main_loop(witness, args.once, args.interval)
            return EXIT_TAMPERED if refused else EXIT_OK
        finally:
            backend.close()

    from streamledger.audit import export_bundle
    from streamledger.core.bundle import verify_bundle

    if args.audit_command == "export":
        membership = None
        if args.membership is not None:
            try:
                membership = json.loads(args.membership.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot read membership document {args.membership}: {exc}"
                ) from None
        backend = open_backend(args)
        try:
            ledger = Ledger(backend, args.ledger)
            trust = trust_policy(args, ledger)
            text = export_bundle(
                ledger,
                args.partition,
                args.seq,
                trust=trust,
                hashes_only=args.hashes_only,
                membership=membership,
            )
        finally:
            backend.close()
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"audit bundle written to {args.output}", file=sys.stderr)
        return EXIT_OK

    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read audit bundle {args.file}: {exc.strerror}") from None
    trust = trust_policy(args)
    assert trust is not None
    try:
        report = verify_bundle(raw, trust.log_keys, trust.witness_keys, trust.required_witnesses)
    except VerificationError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"NOT VERIFIED: {exc}")
        raise
    except FormatError as exc:
        raise FormatError(f"{args.file}: {exc}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "ledger": report.ledger,
                    "partition": report.partition,
                    "tree_size": report.tree_size,
                    "entries": report.entries,
                    "facts": report.facts,
                    "warnings": report.warnings,
                }
            )
        )
        return EXIT_OK
    print(f"Audit bundle {args.file}: ledger {report.ledger}, partition {report.partition}")
    for fact in report.facts:
        print(f"  \u2713 {fact}")
    for warning in report.warnings:
        print(f"  ! {warning}")
    print(
        f"VERIFIED: the {len(report.entries)} entr{'y' if len(report.entries) == 1 else 'ies'} "
        f"in this file {'is' if len(report.entries) == 1 else 'are'} part of the ledger's "
        "signed history exactly as shown, checked with only the keys you gave."
    )
    return EXIT_OK


def _indent(note: str) -> str:
    return "".join(f"    {line}\n" for line in note.splitlines()).rstrip("\n")
