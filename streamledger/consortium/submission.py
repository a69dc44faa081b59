"""Signed submissions: the submitting organization signs each entry's payload.

On a ledger with signed submissions every payload is an *envelope*::

    "SLSB" | version 0x01 | note length (u32, big-endian) | signed note (UTF-8) | inner payload

The signed note is a C2SP signed note with one signature line by the organization's
identity key, over the text::

    streamledger.submission/v1
    ledger <ledger id>
    org <organization name>
    membership <membership ledger seq the submitter relied on>
    id <submission id: 32 hex digits, unique per organization and ledger>
    content-type <media type of the inner payload = the entry's content type>
    key <SHA-256 hex of the entry key, or "-" for none>
    payload <SHA-256 hex of the inner payload> <size>

The entry's payload hash commits to the whole envelope, so a verifier checks the signature
offline from the entry alone plus the membership ledger. See ``docs/consortium.md``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamledger.consortium.membership import (
    OPTION_GENESIS,
    OPTION_MEMBERSHIP,
    OPTION_SIGNED,
    MembershipHistory,
    load_membership,
    refresh_membership,
)
from streamledger.core.note import NoteSignature, SigningKey, parse_note, sign_note
from streamledger.errors import ConfigError, FormatError, StreamledgerError, UnknownVersionError

if TYPE_CHECKING:
    from streamledger.backends.base import Backend
    from streamledger.ledger import AppendItem, Ledger, Receipt

MAGIC = b"SLSB"
VERSION = 1
NOTE_TYPE = "streamledger.submission/v1"
_HEAD = 4 + 1 + 4
_MAX_NOTE = 16_384
_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: Finding kinds ``verify`` reports for signed-submission ledgers.
BAD_SIGNATURE = "bad_submission_signature"
UNAUTHORIZED = "unauthorized_writer"
REPLAYED = "replayed_submission"


class SubmissionRejected(StreamledgerError):
    """A submission that must not be sequenced; ``code`` is the rejects-topic code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"submission rejected ({code}): {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """Why a submission is refused: ``code`` (rejects topic), ``kind`` (verify finding)."""

    code: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Submission:
    """A parsed envelope (signature not yet checked: see :func:`check_submission`)."""

    ledger: str
    org: str
    membership_seq: int
    submission_id: str
    content_type: str
    key_sha256: str | None
    payload_sha256: str
    payload_size: int
    note: str
    signature: NoteSignature
    payload: bytes

    @property
    def text(self) -> str:
        return self.note[: self.note.rfind("\n\n") + 1]

    @classmethod
    def parse(cls, envelope: bytes) -> Submission:
        """Parse an envelope; :class:`FormatError` if it is not one."""
        if len(envelope) < _HEAD or envelope[:4] != MAGIC:
            raise FormatError("payload is not a signed submission envelope")
        if envelope[4] != VERSION:
            raise UnknownVersionError(f"submission envelope version {envelope[4]} is unknown")
        length = int.from_bytes(envelope[5:9], "big")
        if length > _MAX_NOTE or _HEAD + length > len(envelope):
            raise FormatError("submission envelope is truncated")
        try:
            note = envelope[_HEAD : _HEAD + length].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("submission note is not UTF-8") from None
        text, sigs = parse_note(note)
        if len(sigs) != 1:
            raise FormatError(f"a submission carries exactly one signature, not {len(sigs)}")
        lines = text[:-1].split("\n")
        if len(lines) != 8 or lines[0] != NOTE_TYPE:
            raise FormatError(f"submission note must be 8 lines starting {NOTE_TYPE!r}")
        fields: dict[str, str] = {}
        for line, name in zip(
            lines[1:],
            ("ledger", "org", "membership", "id", "content-type", "key", "payload"),
            strict=True,
        ):
            label, sep, value = line.partition(" ")
            if label != name or not sep or not value:
                raise FormatError(f"submission note: expected a {name!r} line, got {line!r}")
            fields[name] = value
        digest, sep, size = fields["payload"].partition(" ")
        key = fields["key"]
        if (
            not sep
            or not _HEX64.match(digest)
            or not size.isdigit()
            or not fields["membership"].isdigit()
            or not _ID.match(fields["id"])
            or (key != "-" and not _HEX64.match(key))
        ):
            raise FormatError("submission note has a malformed field")
        return cls(
            ledger=fields["ledger"],
            org=fields["org"],
            membership_seq=int(fields["membership"]),
            submission_id=fields["id"],
            content_type=fields["content-type"],
            key_sha256=None if key == "-" else key,
            payload_sha256=digest,
            payload_size=int(size),
            note=note,
            signature=sigs[0],
            payload=envelope[_HEAD + length :],
        )


def _text(
    ledger: str,
    org: str,
    membership_seq: int,
    submission_id: str,
    content_type: str,
    key: bytes | None,
    payload: bytes,
) -> str:
    key_text = hashlib.sha256(key).hexdigest() if key else "-"
    return (
        f"{NOTE_TYPE}\nledger {ledger}\norg {org}\nmembership {membership_seq}\n"
        f"id {submission_id}\ncontent-type {content_type}\nkey {key_text}\n"
        f"payload {hashlib.sha256(payload).hexdigest()} {len(payload)}\n"
    )


def sign_submission(
    signer: SigningKey,
    ledger: str,
    payload: bytes,
    *,
    membership_seq: int,
    content_type: str | None = None,
    key: bytes | None = None,
    submission_id: str | None = None,
) -> bytes:
    """The envelope of ``payload`` signed by organization ``signer`` (its identity key,
    whose name is the organization's name) for ``ledger``. ``membership_seq`` is the
    membership ledger seq of the document the submitter relies on; ``key`` is the entry key
    it will be submitted with (signed too); ``submission_id`` defaults to 16 random bytes."""
    content_type = content_type or DEFAULT_CONTENT_TYPE
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in content_type) or not content_type.strip():
        raise ConfigError(f"content type {content_type!r} cannot be signed")
    if membership_seq < 0:
        raise ConfigError("membership_seq must not be negative")
    submission_id = submission_id or secrets.token_hex(16)
    if not _ID.match(submission_id):
        raise ConfigError("submission_id must be 32 lowercase hex digits")
    text = _text(ledger, signer.name, membership_seq, submission_id, content_type, key, payload)
    note = sign_note(text, signer).encode()
    return MAGIC + bytes([VERSION]) + len(note).to_bytes(4, "big") + note + payload


def signed_item(
    signer: SigningKey,
    ledger: str,
    payload: bytes,
    *,
    membership_seq: int,
    content_type: str | None = None,
    key: bytes | None = None,
    submission_id: str | None = None,
) -> AppendItem:
    """An :class:`~streamledger.ledger.AppendItem` carrying the signed envelope."""
    from streamledger.ledger import AppendItem

    envelope = sign_submission(
        signer,
        ledger,
        payload,
        membership_seq=membership_seq,
        content_type=content_type,
        key=key,
        submission_id=submission_id,
    )
    return AppendItem(envelope, key, content_type or DEFAULT_CONTENT_TYPE)


def check_submission(
    history: MembershipHistory,
    ledger: str,
    envelope: bytes,
    *,
    content_type: str,
    key: bytes | None,
    time_ms: int,
) -> tuple[Submission | None, Verdict | None]:
    """Check a submission for ``ledger`` sequenced at ``time_ms`` against the membership
    document in force then. Returns the parsed submission (if it parses) and a verdict if
    it must be refused (None: authorized and validly signed)."""
    try:
        sub = Submission.parse(envelope)
    except FormatError as exc:
        code = "unsigned" if not envelope.startswith(MAGIC) else "malformed_submission"
        return None, Verdict(code, BAD_SIGNATURE, f"not a signed submission: {exc}")
    mismatch = []
    if sub.ledger != ledger:
        mismatch.append(f"signed for ledger {sub.ledger!r}")
    if sub.content_type != content_type:
        mismatch.append(f"signed content type {sub.content_type!r} is not {content_type!r}")
    if sub.key_sha256 != (hashlib.sha256(key).hexdigest() if key else None):
        mismatch.append("signed key differs from the entry key")
    if (
        len(sub.payload) != sub.payload_size
        or hashlib.sha256(sub.payload).hexdigest() != sub.payload_sha256
    ):
        mismatch.append("inner payload does not match the signed hash")
    if sub.signature.name != sub.org:
        mismatch.append(f"signed by key {sub.signature.name!r}, not by org {sub.org!r}")
    if mismatch:
        return sub, Verdict("submission_mismatch", BAD_SIGNATURE, "; ".join(mismatch))
    change = history.at_time(time_ms)
    if change is None:
        return sub, Verdict(
            "no_membership", UNAUTHORIZED, f"no membership document in force in {history.ledger!r}"
        )
    doc = change.document
    org = doc.org(sub.org)
    if org is None:
        before = history.last_writer_change(sub.org, ledger, change.seq + 1)
        if before is not None:
            return sub, Verdict(
                "revoked",
                UNAUTHORIZED,
                f"organization {sub.org!r} was removed from the consortium (membership seq "
                f"{change.seq}, version {doc.version})",
            )
        return sub, Verdict(
            "unknown_org",
            UNAUTHORIZED,
            f"{sub.org!r} is not a member (membership seq {change.seq}, version {doc.version})",
        )
    if sub.signature.key_hash != org.vkey.key_hash or not org.vkey.verify(
        sub.text.encode(), sub.signature.signature
    ):
        return sub, Verdict(
            "bad_signature",
            BAD_SIGNATURE,
            f"signature is not a valid signature of {sub.org!r}'s member key "
            f"(membership seq {change.seq})",
        )
    if sub.membership_seq > change.seq:
        return sub, Verdict(
            "future_membership",
            UNAUTHORIZED,
            f"submission relies on membership seq {sub.membership_seq}, but seq {change.seq} "
            "was in force when it was sequenced",
        )
    if not doc.may_write(sub.org, ledger):
        before = history.last_writer_change(sub.org, ledger, change.seq)
        if before is not None:
            return sub, Verdict(
                "revoked",
                UNAUTHORIZED,
                f"{sub.org!r} lost write permission for {ledger!r} at membership seq "
                f"{change.seq} (version {doc.version})",
            )
        return sub, Verdict(
            "not_a_writer",
            UNAUTHORIZED,
            f"{sub.org!r} has no writer role for {ledger!r} (membership seq {change.seq}, "
            f"version {doc.version})",
        )
    return sub, None


class SubmissionGate:
    """What a sequencer runs before appending to a ledger with signed submissions: the
    membership history (refreshed at most every ``refresh_interval`` seconds) and the
    submission ids seen recently (a replay of one is refused).

    ``SubmissionGate.for_ledger(ledger)`` returns None for ledgers without the option."""

    def __init__(
        self,
        backend: Backend,
        ledger: str,
        membership_ledger: str,
        *,
        genesis_digest: str | None = None,
        refresh_interval: float = 0.0,
        remember: int = 1_000_000,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.history = load_membership(backend, membership_ledger, genesis_digest=genesis_digest)
        self.refresh_interval = refresh_interval
        self._refreshed = time.monotonic()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()

    @classmethod
    def for_ledger(cls, ledger: Ledger, **kwargs: object) -> SubmissionGate | None:
        options: Mapping[str, str] = ledger.config.options
        membership = options.get(OPTION_MEMBERSHIP)
        if not membership:
            return None
        return cls(
            ledger.backend,
            ledger.name,
            membership,
            genesis_digest=options.get(OPTION_GENESIS),
            **kwargs,  # type: ignore[arg-type]
        )

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._refreshed >= self.refresh_interval:
            refresh_membership(self.history, self.backend)
            self._refreshed = now

    def check(self, item: AppendItem, time_ms: int) -> Verdict | None:
        """None if ``item`` may be sequenced at ``time_ms``; else why not. An accepted
        submission's id is remembered (the next one with the same id is a replay)."""
        with self._lock:
            sub, verdict = check_submission(
                self.history,
                self.ledger,
                item.payload,
                content_type=item.content_type or DEFAULT_CONTENT_TYPE,
                key=item.key,
                time_ms=time_ms,
            )
            if verdict is not None or sub is None:
                return verdict
            ident = (sub.org, sub.submission_id)
            if ident in self._seen:
                return Verdict(
                    "replayed",
                    REPLAYED,
                    f"submission id {sub.submission_id} of {sub.org!r} was already sequenced",
                )
            self._seen[ident] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return None

    def forget(self, item: AppendItem) -> None:
        """Forget an accepted item's id (its append failed and will be retried)."""
        try:
            sub = Submission.parse(item.payload)
        except FormatError:
            return
        with self._lock:
            self._seen.pop((sub.org, sub.submission_id), None)


def signed_ledger_options(backend: Backend, membership_ledger: str) -> dict[str, str]:
    """``LedgerConfig.options`` that turn on signed submissions governed by
    ``membership_ledger`` (which must exist and have a valid genesis, pinned here)."""
    history = load_membership(backend, membership_ledger)
    if not history.changes:
        raise ConfigError(f"membership ledger {membership_ledger!r} has no valid genesis document")
    return {
        OPTION_SIGNED: "required",
        OPTION_MEMBERSHIP: membership_ledger,
        OPTION_GENESIS: history.changes[0].document.digest,
    }


def create_signed_ledger(
    backend: Backend,
    name: str,
    *,
    membership_ledger: str,
    partitions: int = 1,
    origin: str | None = None,
    signer: SigningKey | None = None,
    options: Mapping[str, str] | None = None,
    **kwargs: object,
) -> Ledger:
    """Create ledger ``name`` whose entries must be signed submissions of writers of
    ``membership_ledger``'s consortium (the ledger must be in the consortium's scope)."""
    from streamledger.ledger import Ledger

    opts = dict(options or {})
    opts.update(signed_ledger_options(backend, membership_ledger))
    return Ledger.create(
        backend,
        name,
        partitions=partitions,
        origin=origin,
        signer=signer,
        options=opts,
        **kwargs,  # type: ignore[arg-type]
    )


_GATES: weakref.WeakKeyDictionary[Ledger, SubmissionGate] = weakref.WeakKeyDictionary()


def _gate_of(ledger: Ledger) -> SubmissionGate:
    """The gate of this ledger object (kept while it lives: it remembers submission ids)."""
    gate = _GATES.get(ledger)
    if gate is None:
        gate = SubmissionGate.for_ledger(ledger)
        if gate is None:
            raise ConfigError(f"ledger {ledger.name!r} does not have signed submissions")
        _GATES[ledger] = gate
    return gate


def _ledger_clock(ledger: Ledger) -> int:
    clock = getattr(ledger, "_clock", None)
    return int(clock()) if callable(clock) else time.time_ns() // 1_000_000


def submit(
    ledger: Ledger,
    items: list[AppendItem],
    *,
    gate: SubmissionGate | None = None,
    partition: int | None = None,
) -> list[Receipt]:
    """Append signed submissions to ``ledger`` all or nothing after checking each against
    the membership in force (the in-process sequencer of an embedded ledger). Raises
    :class:`SubmissionRejected` naming the first refused item; nothing is appended then."""
    gate = gate or _gate_of(ledger)
    gate.refresh(force=True)
    now = _ledger_clock(ledger)
    accepted: list[AppendItem] = []
    for index, item in enumerate(items):
        verdict = gate.check(item, now)
        if verdict is not None:
            for done in accepted:
                gate.forget(done)
            where = f" (item {index})" if len(items) > 1 else ""
            raise SubmissionRejected(verdict.code, verdict.detail + where)
        accepted.append(item)
    try:
        return ledger.append_many(accepted, partition=partition)
    except BaseException:
        for done in accepted:
            gate.forget(done)
        raise


def append_signed(
    ledger: Ledger,
    payload: bytes,
    *,
    sign_as: SigningKey,
    key: bytes | None = None,
    content_type: str | None = None,
    partition: int | None = None,
    membership_seq: int | None = None,
    gate: SubmissionGate | None = None,
) -> Receipt:
    """Sign ``payload`` as organization ``sign_as`` and append it (see :func:`submit`).

    ``membership_seq`` defaults to the membership ledger seq currently in force."""
    gate = gate or _gate_of(ledger)
    if membership_seq is None:
        gate.refresh(force=True)
        current = gate.history.current
        membership_seq = current.seq if current is not None else 0
    item = signed_item(
        sign_as,
        ledger.name,
        payload,
        membership_seq=membership_seq,
        content_type=content_type,
        key=key,
    )
    return submit(ledger, [item], gate=gate, partition=partition)[0]


__all__ = [
    "BAD_SIGNATURE",
    "MAGIC",
    "NOTE_TYPE",
    "REPLAYED",
    "UNAUTHORIZED",
    "Submission",
    "SubmissionGate",
    "SubmissionRejected",
    "Verdict",
    "append_signed",
    "check_submission",
    "create_signed_ledger",
    "sign_submission",
    "signed_item",
    "signed_ledger_options",
    "submit",
]
