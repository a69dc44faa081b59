"""Organizations and membership: who belongs to a consortium, with which keys and roles.

A *membership document* is canonical JSON (keys sorted, no spaces, ASCII)::

    {"admin_threshold":2,"consortium":"acme","ledgers":["payments"],
     "orgs":[{"name":"bank-a","roles":["admin","writer:payments"],"vkey":"bank-a+..."}, ...],
     "previous":null,"type":"streamledger.membership/v1","version":1}

Each organization is known by its Ed25519 identity (a C2SP verifier key whose key name is the
organization's name) and has roles: ``admin`` (signs membership changes), ``operator`` (runs
the log), ``writer:<ledger>`` / ``writer:*`` (may submit entries), ``witness`` and
``auditor``. ``witness_vkey`` (a tlog-cosignature key) and ``log_vkey`` (a checkpoint key)
are optional.

Documents live in a *membership ledger*, one entry per version, each entry a C2SP signed note
whose text is ``streamledger.membership/v1\\n<canonical JSON>\\n`` and whose signature lines
are the admins' approvals. Version 1 (genesis) must carry ``admin_threshold`` signatures of
its own admins; version n+1 must name the SHA-256 of version n in ``previous`` and carry
``admin_threshold`` signatures of the admins of version n. Replaying the ledger
(:func:`load_membership`) applies valid changes and turns invalid ones into findings, so the
document in force at any sequence number or time (:func:`membership_at`) is answerable.
See ``docs/consortium.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from streamledger.core.entry import Entry, validate_ledger_id
from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    KEY_TYPE_ED25519,
    SigningKey,
    VerifierKey,
    add_signature,
    parse_note,
    sign_note,
    signature_line,
)
from streamledger.core.verify import Finding
from streamledger.errors import (
    ConfigError,
    FormatError,
    UnknownVersionError,
    VerificationError,
)

if TYPE_CHECKING:
    from streamledger.backends.base import Backend
    from streamledger.ledger import Ledger

DOCUMENT_TYPE = "streamledger.membership/v1"
MEMBERSHIP_CONTENT_TYPE = "application/vnd.streamledger.membership+note"

#: LedgerConfig.options of a membership ledger: ``{"consortium.kind": "membership"}``.
OPTION_KIND = "consortium.kind"
#: LedgerConfig.options of a ledger with signed submissions: its membership ledger ...
OPTION_MEMBERSHIP = "consortium.membership"
#: ... ``"required"`` ...
OPTION_SIGNED = "consortium.signed-submissions"
#: ... and the SHA-256 (hex) of the membership genesis document seen at init.
OPTION_GENESIS = "consortium.genesis"

ROLES = ("admin", "auditor", "operator", "witness")
_WRITER = re.compile(r"^writer:(\*|[A-Za-z0-9._-]{1,249})$")

BAD_CHANGE = "bad_membership_change"
UNAUTHORIZED_CHANGE = "unauthorized_membership_change"


class MembershipError(VerificationError):
    """A membership change that must not be applied; ``kind`` is the finding kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def canonical_json(data: Any) -> bytes:
    """The canonical JSON bytes of ``data``: sorted keys, no spaces, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_role(role: str) -> str:
    if role in ROLES or _WRITER.match(role):
        return role
    raise ConfigError(
        f"unknown role {role!r}: use admin, operator, witness, auditor, writer:LEDGER or writer:*"
    )


@dataclass(frozen=True)
class Org:
    """One member: its name, Ed25519 identity key and roles (sorted, unique)."""

    name: str
    vkey: VerifierKey
    roles: tuple[str, ...] = ()
    witness_vkey: VerifierKey | None = None
    log_vkey: VerifierKey | None = None

    def __post_init__(self) -> None:
        if self.vkey.name != self.name:
            raise ConfigError(
                f"organization {self.name!r}: its identity key is named {self.vkey.name!r}; "
                "the key name must be the organization's name"
            )
        if self.vkey.key_type != KEY_TYPE_ED25519:
            raise ConfigError(f"organization {self.name!r}: identity key must be Ed25519 (0x01)")
        if self.witness_vkey is not None and self.witness_vkey.key_type != KEY_TYPE_COSIGNATURE:
            raise ConfigError(f"organization {self.name!r}: witness_vkey is not a cosigning key")
        if self.log_vkey is not None and self.log_vkey.key_type != KEY_TYPE_ED25519:
            raise ConfigError(f"organization {self.name!r}: log_vkey must be an Ed25519 note key")
        object.__setattr__(self, "roles", tuple(sorted({_check_role(r) for r in self.roles})))

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def may_write(self, ledger: str) -> bool:
        """Whether a ``writer:`` role covers ``ledger`` (scope is checked by the document)."""
        return "writer:*" in self.roles or f"writer:{ledger}" in self.roles

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "vkey": str(self.vkey),
            "roles": list(self.roles),
        }
        if self.witness_vkey is not None:
            data["witness_vkey"] = str(self.witness_vkey)
        if self.log_vkey is not None:
            data["log_vkey"] = str(self.log_vkey)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Org:
        unknown = set(data) - {"name", "vkey", "roles", "witness_vkey", "log_vkey"}
        if unknown:
            raise FormatError(f"organization has unknown fields {sorted(unknown)}")
        try:
            name, roles = data["name"], data["roles"]
            if not isinstance(name, str) or not isinstance(roles, list):
                raise TypeError("name must be a string and roles a list")
            if not all(isinstance(r, str) for r in roles):
                raise TypeError("roles must be strings")

            def key(field_name: str) -> VerifierKey | None:
                text = data.get(field_name)
                if text is None:
                    return None
                if not isinstance(text, str):
                    raise TypeError(f"{field_name} must be a string")
                return VerifierKey.parse(text)

            vkey = key("vkey")
            if vkey is None:
                raise KeyError("vkey")
            return cls(name, vkey, tuple(roles), key("witness_vkey"), key("log_vkey"))
        except (KeyError, TypeError, ConfigError) as exc:
            raise FormatError(f"malformed organization {data.get('name')!r}: {exc}") from None


@dataclass(frozen=True)
class MembershipDocument:
    """One version of a consortium's membership (immutable; see the module docstring)."""

    consortium: str
    version: int
    orgs: tuple[Org, ...]
    ledgers: tuple[str, ...] = ()
    admin_threshold: int = 1
    previous: str | None = None

    def __post_init__(self) -> None:
        try:
            validate_ledger_id(self.consortium)
            for ledger in self.ledgers:
                validate_ledger_id(ledger)
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        if self.version < 1:
            raise ConfigError(f"membership version must be at least 1, got {self.version}")
        if (self.version == 1) != (self.previous is None):
            raise ConfigError("only version 1 (genesis) has no previous document")
        if self.previous is not None and not re.fullmatch(r"[0-9a-f]{64}", self.previous):
            raise ConfigError("previous must be a SHA-256 in lowercase hex")
        orgs = tuple(sorted(self.orgs, key=lambda o: o.name))
        names = [o.name for o in orgs]
        if len(set(names)) != len(names):
            raise ConfigError("two organizations share a name")
        object.__setattr__(self, "orgs", orgs)
        object.__setattr__(self, "ledgers", tuple(sorted(set(self.ledgers))))
        for org in orgs:
            for role in org.roles:
                target = role.partition(":")[2]
                if role.startswith("writer:") and target != "*" and target not in self.ledgers:
                    raise ConfigError(
                        f"organization {org.name!r} has role {role!r} but ledger {target!r} is "
                        f"not in the consortium's ledgers {list(self.ledgers)}"
                    )
        admins = len(self.admins)
        if not 1 <= self.admin_threshold <= max(admins, 1) or admins == 0:
            raise ConfigError(
                f"admin_threshold {self.admin_threshold} needs 1..{admins} admins "
                f"(the document has {admins})"
            )

    # -- queries -----------------------------------------------------------------------
    @property
    def admins(self) -> tuple[Org, ...]:
        return tuple(o for o in self.orgs if o.has_role("admin"))

    def org(self, name: str) -> Org | None:
        for org in self.orgs:
            if org.name == name:
                return org
        return None

    def may_write(self, org_name: str, ledger: str) -> bool:
        """Whether ``org_name`` is a member allowed to write ``ledger`` under this document."""
        org = self.org(org_name)
        return org is not None and ledger in self.ledgers and org.may_write(ledger)

    def with_role(self, role: str) -> tuple[Org, ...]:
        return tuple(o for o in self.orgs if o.has_role(role))

    def witness_keys(self) -> tuple[VerifierKey, ...]:
        """Cosigning keys of the members with the ``witness`` role (for a TrustPolicy)."""
        return tuple(o.witness_vkey for o in self.with_role("witness") if o.witness_vkey)

    def log_keys(self) -> tuple[VerifierKey, ...]:
        """Checkpoint keys of the members with the ``operator`` role."""
        return tuple(o.log_vkey for o in self.with_role("operator") if o.log_vkey)

    # -- serialization -----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "type": DOCUMENT_TYPE,
            "consortium": self.consortium,
            "version": self.version,
            "previous": self.previous,
            "ledgers": list(self.ledgers),
            "admin_threshold": self.admin_threshold,
            "orgs": [o.to_json() for o in self.orgs],
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: what the next version names as previous."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def note_text(self) -> str:
        """The text the admins sign: the type line, then the canonical JSON."""
        return f"{DOCUMENT_TYPE}\n{self.canonical().decode()}\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> MembershipDocument:
        """Parse a document (a dict, or JSON text); :class:`FormatError` if it is invalid."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise FormatError(f"membership document is not JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise FormatError("membership document must be a JSON object")
        if data.get("type") != DOCUMENT_TYPE:
            raise UnknownVersionError(
                f"membership document type {data.get('type')!r} is not {DOCUMENT_TYPE!r}"
            )
        fields = {"type", "consortium", "version", "previous", "ledgers", "admin_threshold", "orgs"}
        if set(data) != fields:
            raise FormatError(f"membership document must have exactly the fields {sorted(fields)}")
        try:
            version, threshold = data["version"], data["admin_threshold"]
            if type(version) is not int or type(threshold) is not int:
                raise TypeError("version and admin_threshold must be integers")
            if not isinstance(data["orgs"], list) or not isinstance(data["ledgers"], list):
                raise TypeError("orgs and ledgers must be lists")
            if not all(isinstance(o, Mapping) for o in data["orgs"]):
                raise TypeError("each organization must be an object")
            return cls(
                consortium=data["consortium"],
                version=version,
                orgs=tuple(Org.from_json(o) for o in data["orgs"]),
                ledgers=tuple(data["ledgers"]),
                admin_threshold=threshold,
                previous=data["previous"],
            )
        except (TypeError, ConfigError) as exc:
            raise FormatError(f"invalid membership document: {exc}") from None

    @classmethod
    def from_note_text(cls, text: str) -> MembershipDocument:
        """Parse signed-note text; the JSON must be exactly canonical (no malleability)."""
        head, sep, rest = text.partition("\n")
        if head != DOCUMENT_TYPE or not sep:
            raise FormatError(f"not a membership note: first line must be {DOCUMENT_TYPE!r}")
        body = rest[:-1] if rest.endswith("\n") else rest
        if "\n" in body:
            raise FormatError("membership note text must be two lines")
        doc = cls.from_json(body)
        if doc.canonical().decode() != body:
            raise FormatError("membership document is not in canonical form")
        return doc

    # -- building the next version -----------------------------------------------------
    def successor(
        self,
        *,
        add: Iterable[Org] = (),
        remove: Iterable[str] = (),
        roles: Mapping[str, Sequence[str]] | None = None,
        ledgers: Iterable[str] | None = None,
        admin_threshold: int | None = None,
    ) -> MembershipDocument:
        """The next version: ``add`` (or replace) organizations, ``remove`` some, set the
        ``roles`` of members, change the ledgers in scope or the admin threshold."""
        orgs = {o.name: o for o in self.orgs}
        for name in remove:
            if orgs.pop(name, None) is None:
                raise ConfigError(f"{name!r} is not a member of {self.consortium!r}")
        for org in add:
            orgs[org.name] = org
        for name, new_roles in (roles or {}).items():
            if name not in orgs:
                raise ConfigError(f"{name!r} is not a member of {self.consortium!r}")
            orgs[name] = replace(orgs[name], roles=tuple(new_roles))
        return MembershipDocument(
            consortium=self.consortium,
            version=self.version + 1,
            orgs=tuple(orgs.values()),
            ledgers=tuple(self.ledgers if ledgers is None else ledgers),
            admin_threshold=self.admin_threshold if admin_threshold is None else admin_threshold,
            previous=self.digest,
        )


def sign_document(document: MembershipDocument, signers: SigningKey | Sequence[SigningKey]) -> str:
    """A signed note of ``document`` with one signature line per signer (admins)."""
    return sign_note(document.note_text(), signers)


def cosign_document(note: str, signer: SigningKey) -> str:
    """Add ``signer``'s approval to a signed (or unsigned: plain text) membership note.

    Admins sign one after another, each on their own machine: pass the note along."""
    if "\n\n" not in note:  # an unsigned draft: just the text
        MembershipDocument.from_note_text(note)
        return sign_note(note, signer)
    text, sigs = parse_note(note)
    MembershipDocument.from_note_text(text)
    if any(s.name == signer.name and s.key_hash == signer.key_hash for s in sigs):
        return note
    return add_signature(note, signature_line(text, signer))


def check_change(
    previous: MembershipDocument | None, note: str
) -> tuple[MembershipDocument, tuple[str, ...]]:
    """Validate a signed membership change against the document in force (``None`` for
    genesis); return the new document and the admins whose approvals verified.

    Raises :class:`MembershipError` with kind ``bad_membership_change`` (malformed, not the
    next version, invalid admin signature) or ``unauthorized_membership_change`` (too few
    valid admin signatures)."""
    try:
        text, sigs = parse_note(note)
        document = MembershipDocument.from_note_text(text)
    except FormatError as exc:
        raise MembershipError(BAD_CHANGE, f"not a valid membership note: {exc}") from None
    if previous is None:
        if document.version != 1:
            raise MembershipError(
                BAD_CHANGE, f"the first membership document has version {document.version}, not 1"
            )
        authority = document
    else:
        if document.consortium != previous.consortium:
            raise MembershipError(
                BAD_CHANGE,
                f"change is for consortium {document.consortium!r}, not {previous.consortium!r}",
            )
        if document.version != previous.version + 1 or document.previous != previous.digest:
            raise MembershipError(
                BAD_CHANGE,
                f"change to version {document.version} does not follow version "
                f"{previous.version} (digest {previous.digest[:16]}...)",
            )
        authority = previous
    message = text.encode()
    approved: list[str] = []
    for sig in sigs:
        org = authority.org(sig.name)
        if org is None or not org.has_role("admin") or org.vkey.key_hash != sig.key_hash:
            continue  # not an admin's key: ignored, as C2SP notes ignore unknown keys
        if not org.vkey.verify(message, sig.signature):
            raise MembershipError(
                BAD_CHANGE,
                f"the signature of admin {org.name!r} on version "
                f"{document.version} does not verify (forged or altered)",
            )
        if org.name not in approved:
            approved.append(org.name)
    if len(approved) < authority.admin_threshold:
        who = "its own" if previous is None else f"version {previous.version}'s"
        raise MembershipError(
            UNAUTHORIZED_CHANGE,
            f"membership version {document.version} has {len(approved)} valid admin "
            f"signature(s) ({', '.join(approved) or 'none'}), {who} policy needs "
            f"{authority.admin_threshold}",
        )
    return document, tuple(approved)


@dataclass(frozen=True)
class MembershipChange:
    """A valid membership change as recorded in the membership ledger: the document, the
    signed note (the evidence) and where it sits (seq, storage offset, leaf hash, time)."""

    membership_ledger: str
    seq: int
    timestamp_ms: int
    leaf_hash: str
    document: MembershipDocument
    note: str
    signers: tuple[str, ...]
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "membership_ledger": self.membership_ledger,
            "seq": self.seq,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "leaf_hash": self.leaf_hash,
            "digest": self.document.digest,
            "signers": list(self.signers),
            "document": self.document.to_json(),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MembershipChange:
        """Parse :meth:`to_json` output, re-checking that the note carries the document."""
        try:
            document = MembershipDocument.from_json(data["document"])
            text, _ = parse_note(data["note"])
            if MembershipDocument.from_note_text(text) != document:
                raise FormatError("the note does not carry this document")
            return cls(
                membership_ledger=str(data["membership_ledger"]),
                seq=int(data["seq"]),
                timestamp_ms=int(data["timestamp_ms"]),
                leaf_hash=str(data["leaf_hash"]),
                document=document,
                note=data["note"],
                signers=tuple(data["signers"]),
                offset=data.get("offset"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed membership record: {exc}") from None


@dataclass
class MembershipHistory:
    """The replayed membership ledger: valid changes in order, and findings for bad ones."""

    ledger: str
    changes: list[MembershipChange] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    next_seq: int = 0
    genesis_digest: str | None = None

    @property
    def current(self) -> MembershipChange | None:
        return self.changes[-1] if self.changes else None

    def feed(self, entry: Entry, offset: int | None = None) -> None:
        """Apply the membership ledger's next entry (in seq order)."""
        seq = entry.header.seq
        self.next_seq = max(self.next_seq, seq + 1)
        current = self.current

        def finding(kind: str, detail: str) -> None:
            self.findings.append(
                Finding(kind, self.ledger, entry.header.partition, seq, offset, detail)
            )

        if entry.payload is None or not entry.payload_matches():
            finding(BAD_CHANGE, "membership change payload is missing or altered; not applied")
            return
        try:
            note = entry.payload.decode("utf-8")
        except UnicodeDecodeError:
            finding(BAD_CHANGE, "membership change is not UTF-8 text; not applied")
            return
        try:
            document, signers = check_change(current.document if current else None, note)
        except MembershipError as exc:
            finding(exc.kind, f"{exc}; not applied")
            return
        if current is None and self.genesis_digest and document.digest != self.genesis_digest:
            finding(
                BAD_CHANGE,
                f"genesis document {document.digest[:16]}... is not the pinned genesis "
                f"{self.genesis_digest[:16]}...; not applied",
            )
            return
        self.changes.append(
            MembershipChange(
                self.ledger,
                seq,
                entry.header.timestamp_ms,
                entry.leaf_hash.hex(),
                document,
                note,
                signers,
                offset,
            )
        )

    def at_seq(self, seq: int) -> MembershipChange | None:
        """The change in force after membership ledger entry ``seq`` was applied."""
        found = None
        for change in self.changes:
            if change.seq > seq:
                break
            found = change
        return found

    def at_time(self, time_ms: int) -> MembershipChange | None:
        """The change in force at ``time_ms``: the latest valid change sequenced at or
        before that time (by the membership ledger's entry timestamps)."""
        found = None
        for change in self.changes:
            if change.timestamp_ms <= time_ms:
                found = change
        return found

    def chain(self, upto: MembershipChange) -> list[str]:
        """The signed notes from genesis up to ``upto``: enough to re-check ``upto`` offline
        (:func:`verify_membership_chain`)."""
        return [c.note for c in self.changes if c.seq <= upto.seq]

    def evidence(self, change: MembershipChange) -> dict[str, Any]:
        """JSON evidence for ``change``: the record plus the chain of notes from genesis."""
        data = change.to_json()
        data["chain"] = self.chain(change)
        return data

    def last_writer_change(self, org: str, ledger: str, before: int) -> MembershipChange | None:
        """The latest change before seq ``before`` under which ``org`` could write ``ledger``
        (to tell a revoked writer from one that never was)."""
        found = None
        for change in self.changes:
            if change.seq >= before:
                break
            if change.document.may_write(org, ledger):
                found = change
        return found


def replay_membership(
    ledger: str,
    entries: Iterable[Entry | tuple[Entry, int | None]],
    *,
    genesis_digest: str | None = None,
) -> MembershipHistory:
    """Replay membership ledger entries (seq order) into a :class:`MembershipHistory`."""
    history = MembershipHistory(ledger, genesis_digest=genesis_digest)
    for item in entries:
        entry, offset = item if isinstance(item, tuple) else (item, None)
        history.feed(entry, offset)
    return history


def refresh_membership(history: MembershipHistory, backend: Backend) -> MembershipHistory:
    """Apply membership entries appended since ``history`` was last fed."""
    from streamledger.core.entry import decode_record

    for record in backend.read(history.ledger, 0, history.next_seq):
        try:
            entry = decode_record(record.value)
        except FormatError:
            history.findings.append(
                Finding(
                    BAD_CHANGE,
                    history.ledger,
                    0,
                    history.next_seq,
                    record.offset,
                    "membership ledger record is not an entry; not applied",
                )
            )
            history.next_seq += 1
            continue
        history.feed(entry, record.offset)
    return history


def load_membership(
    backend: Backend, ledger: str, *, genesis_digest: str | None = None
) -> MembershipHistory:
    """Replay membership ledger ``ledger`` from ``backend`` (partition 0, honest read order).

    ``genesis_digest`` pins the genesis document (SHA-256 hex): a different genesis is a
    finding and nothing is in force. The membership ledger's own integrity (chain, signed
    checkpoints) is checked by verifying it like any ledger."""
    backend.ledger_config(ledger)  # ConfigError naming it if it does not exist
    return refresh_membership(MembershipHistory(ledger, genesis_digest=genesis_digest), backend)


def membership_ledger_of(ledger: Ledger) -> str | None:
    """The membership ledger governing ``ledger`` (itself if it is one), or None."""
    options = ledger.config.options
    if options.get(OPTION_KIND) == "membership":
        return ledger.name
    return options.get(OPTION_MEMBERSHIP) or None


def membership_at(
    ledger: Ledger, *, time_ms: int | None = None, seq: int | None = None
) -> MembershipChange | None:
    """The membership change (document + signed note + position) in force for ``ledger``.

    ``ledger`` is a membership ledger or a ledger governed by one (signed submissions).
    Give ``time_ms`` (e.g. an entry's ``header.timestamp_ms``: who was a member when it was
    sequenced) or ``seq`` (a membership ledger sequence number, e.g. the one a submission
    claims); neither: the current document. None if the ledger is not governed by a
    membership ledger or no valid document was in force then. ``.to_json()`` serializes it;
    :meth:`MembershipHistory.evidence` adds the chain of notes from genesis."""
    name = membership_ledger_of(ledger)
    if name is None:
        return None
    history = load_membership(
        ledger.backend, name, genesis_digest=ledger.config.options.get(OPTION_GENESIS)
    )
    if time_ms is not None:
        return history.at_time(time_ms)
    if seq is not None:
        return history.at_seq(seq)
    return history.current


def verify_membership_chain(
    notes: Sequence[str], *, genesis_digest: str | None = None
) -> MembershipDocument:
    """Check, offline, a chain of signed membership notes from genesis; return the last
    document. Raises :class:`MembershipError` at the first change that does not verify."""
    if not notes:
        raise MembershipError(BAD_CHANGE, "empty membership chain")
    document: MembershipDocument | None = None
    for note in notes:
        document, _ = check_change(document, note)
        if document.version == 1 and genesis_digest and document.digest != genesis_digest:
            raise MembershipError(BAD_CHANGE, "the chain does not start at the pinned genesis")
    assert document is not None
    return document


def verify_membership_evidence(
    data: Mapping[str, Any], *, genesis_digest: str | None = None
) -> MembershipDocument:
    """Check :meth:`MembershipHistory.evidence` output offline: the chain verifies from
    genesis and ends at the recorded document. Returns that document."""
    try:
        record = MembershipChange.from_json(data)
        chain = list(data["chain"])
    except (KeyError, TypeError, FormatError) as exc:
        raise MembershipError(BAD_CHANGE, f"malformed membership evidence: {exc}") from None
    document = verify_membership_chain(chain, genesis_digest=genesis_digest)
    if document != record.document:
        raise MembershipError(BAD_CHANGE, "the chain does not end at the recorded document")
    return document


# -- membership ledgers ----------------------------------------------------------------
def create_membership_ledger(
    backend: Backend,
    name: str,
    genesis_note: str,
    *,
    signer: SigningKey | None = None,
    origin: str | None = None,
    **kwargs: Any,
) -> Ledger:
    """Create membership ledger ``name`` (one partition) whose first entry is the signed
    genesis note (checked: it must carry its own admin threshold of signatures). Other
    keyword arguments go to :class:`~streamledger.ledger.Ledger` (``clock``, ``producer``)."""
    from streamledger.ledger import Ledger

    try:
        check_change(None, genesis_note)
    except MembershipError as exc:
        raise ConfigError(f"membership genesis refused: {exc}") from None
    ledger = Ledger.create(
        backend,
        name,
        partitions=1,
        origin=origin,
        signer=signer,
        options={OPTION_KIND: "membership"},
        **kwargs,
    )
    ledger.append(genesis_note.encode(), content_type=MEMBERSHIP_CONTENT_TYPE, partition=0)
    return ledger


def submit_change(ledger: Ledger, note: str, *, check: bool = True) -> MembershipChange | None:
    """Append a signed change to membership ledger ``ledger`` after checking it against the
    document in force; return it as recorded. ``check=False`` appends it unchecked (to test
    the verifier) and returns None if it is not in force."""
    if ledger.config.options.get(OPTION_KIND) != "membership":
        raise ConfigError(f"ledger {ledger.name!r} is not a membership ledger")
    history = load_membership(ledger.backend, ledger.name)
    current = history.current
    if check:
        try:
            check_change(current.document if current else None, note)
        except MembershipError as exc:
            raise ConfigError(f"membership change refused: {exc}") from None
    receipt = ledger.append(note.encode(), content_type=MEMBERSHIP_CONTENT_TYPE, partition=0)
    refresh_membership(history, ledger.backend)
    latest = history.current
    if latest is None or latest.seq != receipt.seq:
        if check:  # someone else appended an incompatible change meanwhile
            raise ConfigError(f"membership change at seq {receipt.seq} is not in force")
        return None
    return latest


__all__ = [
    "BAD_CHANGE",
    "DOCUMENT_TYPE",
    "MEMBERSHIP_CONTENT_TYPE",
    "OPTION_GENESIS",
    "OPTION_KIND",
    "OPTION_MEMBERSHIP",
    "OPTION_SIGNED",
    "ROLES",
    "UNAUTHORIZED_CHANGE",
    "MembershipChange",
    "MembershipDocument",
    "MembershipError",
    "MembershipHistory",
    "Org",
    "canonical_json",
    "check_change",
    "cosign_document",
    "create_membership_ledger",
    "load_membership",
    "membership_at",
    "membership_ledger_of",
    "refresh_membership",
    "replay_membership",
    "sign_document",
    "submit_change",
    "verify_membership_chain",
    "verify_membership_evidence",
]
