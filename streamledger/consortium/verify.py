"""Consortium checks that ``Ledger.verify`` adds for ledgers whose options ask for them.

* A **membership ledger** (option ``consortium.kind=membership``): every change must be
  signed by enough admins of the document before it; a change that is not becomes a
  ``bad_membership_change`` or ``unauthorized_membership_change`` finding (and is not
  applied, so later documents are judged against the last valid one).
* A ledger with **signed submissions** (option ``consortium.membership=M``): every entry's
  payload must be an envelope signed by an organization that, in the membership document in
  force when the entry was sequenced (its header timestamp), was a member with a writer role
  for the ledger: ``bad_submission_signature`` (unsigned, malformed, forged, altered) or
  ``unauthorized_writer`` (non-member, no writer role, revoked); a submission id used twice
  by the same organization is a ``replayed_submission``.

The main verifier has already checked chain, payload hashes and checkpoints; records it
could not decode, foreign records and altered payloads are its findings and skipped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamledger.consortium.membership import (
    OPTION_GENESIS,
    OPTION_KIND,
    OPTION_MEMBERSHIP,
    MembershipHistory,
    load_membership,
)
from streamledger.consortium.submission import REPLAYED, UNAUTHORIZED, check_submission
from streamledger.core.entry import decode_record
from streamledger.core.verify import Finding, PartitionReport
from streamledger.errors import FormatError, StreamledgerError

if TYPE_CHECKING:
    from streamledger.ledger import Ledger


def wants_consortium_checks(options: dict[str, str]) -> bool:
    return options.get(OPTION_KIND) == "membership" or bool(options.get(OPTION_MEMBERSHIP))


def check_ledger(ledger: Ledger, reports: Sequence[PartitionReport]) -> None:
    """Add consortium findings and warnings to ``reports`` (see the module docstring)."""
    options = ledger.config.options
    if options.get(OPTION_KIND) == "membership":
        _check_membership_ledger(ledger, reports)
    if options.get(OPTION_MEMBERSHIP):
        _check_submissions(ledger, reports, options[OPTION_MEMBERSHIP])


def _check_membership_ledger(ledger: Ledger, reports: Sequence[PartitionReport]) -> None:
    for report in reports:
        if report.partition != 0:
            continue
        history = load_membership(ledger.backend, ledger.name)
        flagged = {f.seq for f in report.findings}
        report.findings.extend(f for f in history.findings if f.seq not in flagged)
        if history.current is not None:
            doc = history.current.document
            report.warnings.append(
                f"membership of {doc.consortium!r}: version {doc.version} in force "
                f"(seq {history.current.seq}, {len(doc.orgs)} organizations, genesis "
                f"{history.changes[0].document.digest})"
            )


def _check_submissions(ledger: Ledger, reports: Sequence[PartitionReport], membership: str) -> None:
    try:
        history = load_membership(
            ledger.backend, membership, genesis_digest=ledger.config.options.get(OPTION_GENESIS)
        )
    except StreamledgerError as exc:
        for report in reports:
            report.findings.append(
                Finding(
                    UNAUTHORIZED,
                    ledger.name,
                    report.partition,
                    None,
                    None,
                    f"membership ledger {membership!r} cannot be read ({exc}): no writer can be "
                    "shown to be authorized",
                )
            )
        return
    note = _history_note(history)
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for report in reports:
        if note:
            report.warnings.append(note)
        _check_partition(ledger, report, history, seen)


def _history_note(history: MembershipHistory) -> str | None:
    if not history.findings:
        return None
    return (
        f"membership ledger {history.ledger!r} holds {len(history.findings)} invalid "
        f"change(s), not applied (run 'streamledger verify {history.ledger}')"
    )


def _check_partition(
    ledger: Ledger,
    report: PartitionReport,
    history: MembershipHistory,
    seen: dict[tuple[str, str], tuple[int, int]],
) -> None:
    name, partition = ledger.name, report.partition
    checked: set[tuple[int, bytes]] = set()
    for record in ledger.backend.scan(name, partition):
        try:
            entry = decode_record(record.value)
        except FormatError:
            continue  # malformed / unknown version: the main verifier's finding
        header = entry.header
        if header.ledger != name or header.partition != partition:
            continue  # foreign
        if not entry.payload_matches():
            continue  # payload_modified / payload_missing: reported already
        mark = (header.seq, entry.leaf_hash)
        if mark in checked:
            continue  # the same record stored twice
        checked.add(mark)
        assert entry.payload is not None
        sub, verdict = check_submission(
            history,
            name,
            entry.payload,
            content_type=header.content_type,
            key=header.key or None,
            time_ms=header.timestamp_ms,
        )
        if verdict is not None:
            report.findings.append(
                Finding(verdict.kind, name, partition, header.seq, record.offset, verdict.detail)
            )
            continue
        assert sub is not None
        first = seen.setdefault((sub.org, sub.submission_id), (partition, header.seq))
        if first != (partition, header.seq):
            report.findings.append(
                Finding(
                    REPLAYED,
                    name,
                    partition,
                    header.seq,
                    record.offset,
                    f"submission {sub.submission_id} of {sub.org!r} was already sequenced at "
                    f"partition {first[0]} seq {first[1]}",
                )
            )


__all__ = ["check_ledger", "wants_consortium_checks"]
