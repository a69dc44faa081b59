"""``streamledger org ...`` and ``streamledger membership ...`` (parsers and handlers), and
the ``init --signed-submissions`` / ``append --sign-as`` parts. Wired in by
:mod:`streamledger.cli.main` and :mod:`streamledger.cli.commands`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamledger.consortium.membership import (
    OPTION_MEMBERSHIP,
    MembershipChange,
    MembershipDocument,
    Org,
    cosign_document,
    create_membership_ledger,
    load_membership,
)
from streamledger.consortium.membership import (
    submit_change as _submit_change,
)
from streamledger.core.note import VerifierKey
from streamledger.errors import ConfigError


# -- parsers -------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Add the ``org`` and ``membership`` commands to the CLI's subparsers."""
    org = sub.add_parser("org", help="consortium organizations: Ed25519 identities")
    org_sub = org.add_subparsers(dest="org_command", metavar="ACTION")
    org_sub.required = True
    create = org_sub.add_parser("create", help="create an organization's identity key")
    create.add_argument("name", help="organization name (the key name), e.g. bank-a")
    show = org_sub.add_parser("show", help="print an organization's verifier key")
    show.add_argument("name")

    mem = sub.add_parser("membership", help="consortium membership documents and changes")
    ms = mem.add_subparsers(dest="membership_command", metavar="ACTION")
    ms.required = True
    draft = ms.add_parser("draft", help="write the genesis document (unsigned) of a consortium")
    draft.add_argument("consortium", help="consortium name")
    draft.add_argument(
        "--org",
        action="append",
        default=[],
        required=True,
        metavar="NAME=ROLE,ROLE",
        help="member and roles (admin, operator, writer:LEDGER, writer:*, witness, auditor)",
    )
    _doc_args(draft)
    propose = ms.add_parser("propose", help="write the next version (unsigned) of a membership")
    propose.add_argument("membership_ledger")
    propose.add_argument(
        "--add", action="append", default=[], metavar="NAME=ROLE,ROLE", help="add a member"
    )
    propose.add_argument("--remove", action="append", default=[], metavar="NAME")
    propose.add_argument(
        "--roles", action="append", default=[], metavar="NAME=ROLE,ROLE", help="set roles"
    )
    _doc_args(propose)
    sign = ms.add_parser("sign", help="add an admin's signature to a membership note file")
    sign.add_argument("file", type=Path)
    sign.add_argument("--as", dest="org", required=True, help="the signing organization")
    sign.add_argument("-o", "--output", type=Path, help="write here (default: in place)")
    init = ms.add_parser("create", help="create a membership ledger from a signed genesis")
    init.add_argument("membership_ledger", help="e.g. CONSORTIUM-membership")
    init.add_argument("file", type=Path, help="the signed genesis note")
    init.add_argument("--signing-key", help="key that signs the ledger's checkpoints")
    init.add_argument("--origin", default=None, help="checkpoint origin prefix")
    apply = ms.add_parser("apply", help="append a signed change (checked against the current)")
    apply.add_argument("membership_ledger")
    apply.add_argument("file", type=Path)
    show = ms.add_parser("show", help="the membership document in force")
    show.add_argument("membership_ledger", help="a membership ledger or a ledger it governs")
    when = show.add_mutually_exclusive_group()
    when.add_argument("--seq", type=int, help="after this membership ledger seq")
    when.add_argument("--time", type=int, metavar="MS", help="at this time (ms since epoch)")
    show.add_argument("--json", action="store_true", help="the record as JSON")
    show.add_argument(
        "--evidence", action="store_true", help="with --json: add the chain of notes from genesis"
    )


def _doc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vkey",
        action="append",
        default=[],
        metavar="NAME=VKEY",
        help="a member's verifier key (text or file; default: the local key NAME)",
    )
    parser.add_argument(
        "--ledger", action="append", default=[], help="a ledger in the consortium's scope"
    )
    parser.add_argument("--admin-threshold", type=int, default=None, help="admins per change")
    parser.add_argument("-o", "--output", type=Path, help="write the draft here (default stdout)")


def add_init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--signed-submissions",
        action="store_true",
        help="every entry must be signed by a writer of the consortium (needs --membership)",
    )
    parser.add_argument("--membership", help="the membership ledger governing this ledger")


def add_append_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sign-as", metavar="ORG", help="signed-submissions ledger: sign entries as this org"
    )


# -- helpers -------------------------------------------------------------------------------
def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise ConfigError(f"{what} {value!r}: expected NAME=VALUE")
        out[name] = rest
    return out


def _roles(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _org(args: argparse.Namespace, name: str, roles: str, vkeys: dict[str, str]) -> Org:
    from streamledger.cli.commands import key_store
    from streamledger.keys import load_vkey

    vkey: VerifierKey = load_vkey(vkeys[name]) if name in vkeys else key_store(args).vkey(name)
    return Org(name, vkey, _roles(roles))


def _write(args: argparse.Namespace, text: str, what: str) -> None:
    if args.output is None:
        sys.stdout.write(text)
        return
    try:
        args.output.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"{what} written to {args.output}", file=sys.stderr)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _describe(change: MembershipChange) -> str:
    doc = change.document
    lines = [
        f"consortium {doc.consortium} version {doc.version} (membership ledger "
        f"{change.membership_ledger} seq {change.seq}, time {change.timestamp_ms})",
        f"digest {doc.digest}",
        f"ledgers: {', '.join(doc.ledgers) or '-'}; changes need {doc.admin_threshold} admin(s)",
        f"approved by: {', '.join(change.signers)}",
    ]
    for org in doc.orgs:
        lines.append(f"  {org.name:<20} {' '.join(org.roles):<40} {org.vkey}")
    return "\n".join(lines) + "\n"


# -- handlers ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from streamledger.cli.commands import key_store, open_backend
    from streamledger.cli.main import EXIT_OK

    if args.command == "org":
        store = key_store(args)
        if args.org_command == "create":
            vkey = store.generate(args.name)
            print(f"created organization {args.name!r}", file=sys.stderr)
            print(f"  private key: {store.key_path(args.name)} (mode 0600)", file=sys.stderr)
            print(vkey)
        else:
            print(store.vkey(args.name))
        return EXIT_OK

    command = args.membership_command
    if command == "draft":
        vkeys = _pairs(args.vkey, "--vkey")
        orgs = [_org(args, n, r, vkeys) for n, r in _pairs(args.org, "--org").items()]
        doc = MembershipDocument(
            args.consortium,
            1,
            tuple(orgs),
            ledgers=tuple(args.ledger),
            admin_threshold=args.admin_threshold or 1,
        )
        _write(args, doc.note_text(), "unsigned genesis")
        return EXIT_OK
    if command == "sign":
        note = cosign_document(_read(args.file), key_store(args).load(args.org))
        if args.output is None:
            args.output = args.file
        _write(args, note, f"note signed by {args.org}")
        return EXIT_OK
    backend = open_backend(args, create=command == "create")
    try:
        if command == "create":
            signer = key_store(args).load(args.signing_key) if args.signing_key else None
            ledger = create_membership_ledger(
                backend, args.membership_ledger, _read(args.file), signer=signer, origin=args.origin
            )
            change = load_membership(backend, ledger.name).current
            assert change is not None
            print(f"created membership ledger {ledger.name!r}", file=sys.stderr)
            sys.stdout.write(_describe(change))
        elif command == "propose":
            history = load_membership(backend, args.membership_ledger)
            if history.current is None:
                raise ConfigError(f"{args.membership_ledger!r} has no valid membership document")
            vkeys = _pairs(args.vkey, "--vkey")
            current = history.current.document
            doc = current.successor(
                add=[_org(args, n, r, vkeys) for n, r in _pairs(args.add, "--add").items()],
                remove=args.remove,
                roles={n: _roles(r) for n, r in _pairs(args.roles, "--roles").items()},
                ledgers=(*current.ledgers, *args.ledger) if args.ledger else None,
                admin_threshold=args.admin_threshold,
            )
            _write(args, doc.note_text(), f"unsigned version {doc.version}")
        elif command == "apply":
            from streamledger.ledger import Ledger

            change = _submit_change(Ledger(backend, args.membership_ledger), _read(args.file))
            assert change is not None
            sys.stdout.write(_describe(change))
        elif command == "show":
            from streamledger.consortium.membership import (
                OPTION_GENESIS,
                membership_ledger_of,
            )
            from streamledger.ledger import Ledger

            ledger = Ledger(backend, args.membership_ledger)
            name = membership_ledger_of(ledger) or ledger.name
            history = load_membership(
                backend, name, genesis_digest=ledger.config.options.get(OPTION_GENESIS)
            )
            if args.seq is not None:
                change = history.at_seq(args.seq)
            elif args.time is not None:
                change = history.at_time(args.time)
            else:
                change = history.current
            if change is None:
                raise ConfigError(f"no valid membership document in force in {name!r} then")
            if args.json:
                data = history.evidence(change) if args.evidence else change.to_json()
                sys.stdout.write(json.dumps(data, indent=2) + "\n")
            else:
                sys.stdout.write(_describe(change))
            for finding in history.findings:
                print(f"warning: {finding}", file=sys.stderr)
    finally:
        backend.close()
    return EXIT_OK


def init_options(args: argparse.Namespace, backend: Any) -> dict[str, str]:
    """The ledger options ``init --signed-submissions --membership M`` asks for."""
    from streamledger.consortium.submission import signed_ledger_options

    if not args.signed_submissions:
        if args.membership:
            raise ConfigError("--membership only applies with --signed-submissions")
        return {}
    if not args.membership:
        raise ConfigError("--signed-submissions needs --membership MEMBERSHIP_LEDGER")
    if args.encrypt:
        raise ConfigError("--signed-submissions and --encrypt cannot be combined yet")
    options = signed_ledger_options(backend, args.membership)
    history = load_membership(backend, args.membership)
    assert history.current is not None
    if args.ledger not in history.current.document.ledgers:
        raise ConfigError(
            f"ledger {args.ledger!r} is not in the ledgers of consortium "
            f"{history.current.document.consortium!r}: add it with 'membership propose "
            f"{args.membership} --ledger {args.ledger}' first"
        )
    return options


def signed_appender(
    args: argparse.Namespace, ledger: Any
) -> Callable[[list[Any], int | None], list[Any]] | None:
    """For ``append``: None on a plain ledger, else a function that signs a batch as
    ``--sign-as`` and appends it through the submission gate."""
    from streamledger.cli.commands import key_store
    from streamledger.consortium.submission import SubmissionGate, signed_item, submit

    membership = ledger.config.options.get(OPTION_MEMBERSHIP)
    if not membership:
        if args.sign_as:
            raise ConfigError(
                f"ledger {ledger.name!r} does not take signed submissions (init it with "
                "--signed-submissions --membership M)"
            )
        return None
    if not args.sign_as:
        raise ConfigError(
            f"ledger {ledger.name!r} takes signed submissions only: pass --sign-as ORG"
        )
    key = key_store(args).load(args.sign_as)
    gate = SubmissionGate.for_ledger(ledger)
    assert gate is not None
    current = gate.history.current
    seq = current.seq if current is not None else 0

    def append(batch: list[Any], partition: int | None) -> list[Any]:
        items = [
            signed_item(
                key,
                ledger.name,
                item.payload,
                membership_seq=seq,
                content_type=item.content_type,
                key=item.key,
            )
            for item in batch
        ]
        return submit(ledger, items, gate=gate, partition=partition)

    return append


__all__ = ["add_append_args", "add_commands", "add_init_args", "init_options", "run"]
