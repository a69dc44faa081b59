"""Witness documents and offline audit bundles: pure formats, no I/O.

Three things live here because the ledger, the witness service and the auditor's offline
check all need them:

* **Cosignature documents** (document kind ``cosignatures``, key ``<partition>/<size>``): a
  C2SP signed note whose text is the checkpoint body and whose signature lines are witness
  cosignatures (``tlog-cosignature`` v1). :func:`merge_cosignatures` adds the lines that
  verify to the log's checkpoint note with the *same body*; forged lines are dropped, so a
  bad cosignature published by anyone never invalidates the log's note.
* **Witness alerts** (kind ``alerts``): :class:`WitnessAlert`, the evidence a witness
  publishes when it refuses a checkpoint: the checkpoint it last cosigned (with its
  cosignature) and the conflicting signed checkpoint.
* **Audit bundles**: one canonical JSON file with chosen entries, inclusion proofs to one
  cosigned checkpoint, that checkpoint, key hints, alert evidence and an optional membership
  document. :func:`verify_bundle` checks it with nothing but the auditor's trusted keys.

Canonical form of a bundle: ``json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True)``
plus a final newline, with ``bundle_sha256`` the SHA-256 of that serialization of the object
without ``bundle_sha256``. :func:`verify_bundle` rejects a file that is not byte for byte the
canonical serialization of what it parses to, and one whose digest does not match, so *every*
single-byte change of the file (in a value, a key, the layout or whitespace) is rejected. The
digest only catches accidental or careless edits; what makes a forged bundle fail is that
entries, proofs and checkpoint are bound by hashes and signatures to the trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamledger.core.checkpoint import Checkpoint, verify_checkpoint
from streamledger.core.entry import decode_record
from streamledger.core.merkle import leaf_hash, verify_inclusion
from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    MAX_SIGNATURES,
    NoteSignature,
    VerifierKey,
    parse_note,
)
from streamledger.errors import FormatError, StreamledgerError, VerificationError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BundleReport",
    "WitnessAlert",
    "canonical_bundle",
    "cosignature_document",
    "cosignature_index",
    "merge_cosignatures",
    "note_body",
    "verify_bundle",
]

BUNDLE_FORMAT = "streamledger-audit-bundle"
BUNDLE_VERSION = 1
ALERT_TYPE = "streamledger-witness-alert"


def note_body(note: str) -> str:
    """The text of a signed note (before its signature block); FormatError if malformed."""
    return parse_note(note)[0]


# -- cosignature documents -------------------------------------------------------------------


def cosignature_document(body: str, line: str) -> bytes:
    """The document a witness publishes: the checkpoint body signed only by its cosignature."""
    return (body + "\n" + line.rstrip("\n") + "\n").encode("utf-8")


def cosignature_index(documents: Iterable[bytes | str]) -> dict[str, list[NoteSignature]]:
    """Signature lines of cosignature documents (and cosigned notes), by checkpoint body.

    Malformed documents are skipped: whoever reads them verifies them by their signatures."""
    index: dict[str, list[NoteSignature]] = {}
    for doc in documents:
        try:
            text = doc.decode("utf-8") if isinstance(doc, bytes) else doc
            body, sigs = parse_note(text)
        except (FormatError, UnicodeDecodeError):
            continue
        index.setdefault(body, []).extend(sigs)
    return index


def merge_cosignatures(
    note: str,
    index: dict[str, list[NoteSignature]],
    witness_keys: Sequence[VerifierKey] | None = None,
) -> str:
    """``note`` with the cosignatures of ``index`` for its body appended.

    With ``witness_keys``, only lines by one of those (type 0x04) keys that verify are added:
    a forged or garbled cosignature is dropped instead of making the whole note invalid, and
    lines by keys nobody trusts are left out. Without, every line by a key not yet on the
    note is added (for display and export; verification still decides what counts). At most
    one line per key is added, and never more than the signed-note limit.
    """
    try:
        body, sigs = parse_note(note)
    except FormatError:
        return note
    extra = index.get(body)
    if not extra:
        return note
    keys = None
    if witness_keys is not None:
        keys = {(k.name, k.key_hash): k for k in witness_keys if k.key_type == KEY_TYPE_COSIGNATURE}
    present = {(s.name, s.key_hash) for s in sigs}
    count = len(sigs)
    lines = []
    message = body.encode("utf-8")
    for sig in extra:
        ident = (sig.name, sig.key_hash)
        if ident in present or count >= MAX_SIGNATURES:
            continue
        if keys is not None:
            key = keys.get(ident)
            if key is None or not key.verify(message, sig.signature):
                continue
        present.add(ident)
        count += 1
        lines.append(sig.to_line() + "\n")
    return note + "".join(lines)


# -- witness alerts --------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessAlert:
    """A witness refused a signed checkpoint: the evidence it published.

    ``reason``: ``rollback`` (smaller than the checkpoint it cosigned), ``fork`` (same size,
    different root) or ``inconsistent`` (larger, but the ledger data the witness read does not
    extend the tree it cosigned to the refused root). ``cosigned`` is the checkpoint the witness
    last cosigned, with its cosignature (None if it had cosigned nothing yet); ``refused`` the
    conflicting checkpoint note exactly as the log published it.
    """

    ledger: str
    partition: int
    reason: str
    detail: str
    witness: str
    cosigned: str | None
    refused: str
    time_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": ALERT_TYPE,
            "version": 1,
            "ledger": self.ledger,
            "partition": self.partition,
            "reason": self.reason,
            "detail": self.detail,
            "witness": self.witness,
            "cosigned": self.cosigned,
            "refused": self.refused,
            "time_ms": self.time_ms,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: Any) -> WitnessAlert:
        if not isinstance(data, dict) or data.get("type") != ALERT_TYPE:
            raise FormatError("not a witness alert")
        try:
            alert = cls(
                ledger=data["ledger"],
                partition=data["partition"],
                reason=data["reason"],
                detail=data["detail"],
                witness=data["witness"],
                cosigned=data["cosigned"],
                refused=data["refused"],
                time_ms=data.get("time_ms", 0),
            )
        except KeyError as exc:
            raise FormatError(f"witness alert lacks field {exc}") from None
        for name in ("ledger", "reason", "detail", "witness", "refused"):
            if not isinstance(getattr(alert, name), str):
                raise FormatError(f"witness alert field {name!r} must be a string")
        if alert.cosigned is not None and not isinstance(alert.cosigned, str):
            raise FormatError("witness alert field 'cosigned' must be a note or null")
        if not isinstance(alert.partition, int) or isinstance(alert.partition, bool):
            raise FormatError("witness alert field 'partition' must be an integer")
        return alert

    @classmethod
    def from_bytes(cls, value: bytes) -> WitnessAlert:
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            raise FormatError("witness alert is not JSON") from None
        return cls.from_json(data)

    @property
    def witness_name(self) -> str:
        return self.witness.split("+", 1)[0]


def _checkpoint_of(note: str) -> Checkpoint:
    return Checkpoint.parse(note_body(note))


# -- audit bundles ---------------------------------------------------------------------------


def canonical_bundle(bundle: dict[str, Any]) -> str:
    """The canonical text of ``bundle`` with its ``bundle_sha256`` (re)computed."""
    body = {k: v for k, v in bundle.items() if k != "bundle_sha256"}
    digest = hashlib.sha256(_dump(body).encode("ascii")).hexdigest()
    return _dump({**body, "bundle_sha256": digest})


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


@dataclass
class BundleReport:
    """What an audit bundle established, in plain words."""

    ledger: str
    partition: int
    tree_size: int
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise VerificationError(f"{where}: field {key!r} is missing or of the wrong type")
    return value


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise VerificationError(f"{where} must be 64 lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VerificationError(f"{where} is not hex") from None


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"{where} must be base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"{where} is not valid base64") from None
    if base64.b64encode(raw).decode() != value:
        raise VerificationError(f"{where} is not canonical base64")
    return raw


def parse_bundle_text(raw: bytes | str) -> dict[str, Any]:
    """Parse a bundle file. FormatError if it is not JSON or not an audit bundle at all."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise FormatError("audit bundle is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"audit bundle is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise FormatError(f"not a streamledger audit bundle (format {BUNDLE_FORMAT!r})")
    return data


def verify_bundle(
    raw: bytes | str,
    log_keys: Sequence[VerifierKey],
    witness_keys: Sequence[VerifierKey] = (),
    required_witnesses: int = 0,
) -> BundleReport:
    """Check an audit bundle offline against the auditor's own trusted keys.

    Raises :class:`FormatError` if the file is not an audit bundle at all and
    :class:`VerificationError` naming the first check that failed: the file was changed
    (not canonical, digest), the checkpoint is not signed by a trusted log key or lacks the
    cosignature quorum, an entry's bytes or hashes or inclusion proof do not match, or the
    bundle carries proof that the log signed two different trees of the same size.
    """
    if not log_keys:
        raise VerificationError("no trusted log key was given")
    data = parse_bundle_text(raw)
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if text != _dump(data):
        raise VerificationError(
            "the file was changed after export: it is not in the exact form 'audit export' "
            "writes (a character, the layout or the whitespace differs)"
        )
    if text != canonical_bundle(data):
        raise VerificationError(
            "the file was changed after export: its content does not match its bundle_sha256"
        )
    version = data.get("version")
    if version != BUNDLE_VERSION:
        raise VerificationError(f"unsupported audit bundle version {version!r}")
    ledger = _field(data, "ledger", str, "bundle")
    partition = _field(data, "partition", int, "bundle")
    note = _field(data, "checkpoint", str, "bundle")
    try:
        verified = verify_checkpoint(note, list(log_keys), witness_keys, required_witnesses)
    except FormatError as exc:
        raise VerificationError(f"the bundle's checkpoint is malformed: {exc}") from None
    cp = verified.checkpoint
    if not cp.origin.endswith(f"/ledger/{ledger}/partition/{partition}"):
        raise VerificationError(
            f"the checkpoint's origin {cp.origin!r} is not ledger {ledger!r} partition {partition}"
        )
    report = BundleReport(ledger, partition, cp.tree_size)
    report.facts.append(
        f"the log's checkpoint is genuine: signed by {verified.log_key.name}, it fixes the "
        f"first {cp.tree_size} entries of {ledger} partition {partition} "
        f"(root {cp.root_hash.hex()[:16]}...)"
    )
    names = sorted(verified.cosigners)
    if witness_keys:
        report.facts.append(
            f"{len(names)} of the {len(witness_keys)} witnesses you trust cosigned it"
            + (f" ({', '.join(names)})" if names else "")
            + f"; {required_witnesses} required"
        )
    elif required_witnesses == 0:
        report.warnings.append(
            "no witness keys given: the checkpoint's witness cosignatures were not checked"
        )

    hint = data.get("log_vkey")
    if isinstance(hint, str) and all(str(k) != hint for k in log_keys):
        report.warnings.append(
            f"the bundle names log key {hint.split('+', 1)[0]!r}, which is not a key you "
            "passed; only the keys you passed were used"
        )

    entries = _field(data, "entries", list, "bundle")
    if not entries:
        raise VerificationError("the bundle holds no entries")
    hashes_only = data.get("hashes_only") is True
    last = -1
    for number, item in enumerate(entries):
        where = f"entry #{number}"
        if not isinstance(item, dict):
            raise VerificationError(f"{where} is not an object")
        seq = _field(item, "seq", int, where)
        where = f"entry seq {seq}"
        if seq <= last:
            raise VerificationError(f"{where}: entries must be in increasing seq order")
        last = seq
        leaf = _hex32(item.get("leaf_hash"), f"{where}: leaf_hash")
        payload_hash = _hex32(item.get("payload_hash"), f"{where}: payload_hash")
        proof_field = _field(item, "proof", list, where)
        proof = [_hex32(h, f"{where}: proof[{i}]") for i, h in enumerate(proof_field)]
        if seq >= cp.tree_size:
            raise VerificationError(
                f"{where} is not covered by the checkpoint of {cp.tree_size} entries"
            )
        if "header" in item:
            header_bytes = _b64(item["header"], f"{where}: header")
            if leaf_hash(header_bytes) != leaf:
                raise VerificationError(f"{where}: the header bytes do not hash to leaf_hash")
            try:
                entry = decode_record(header_bytes)
            except StreamledgerError as exc:
                raise VerificationError(
                    f"{where}: the header is not a valid entry: {exc}"
                ) from None
            header = entry.header
            if (header.ledger, header.partition, header.seq) != (ledger, partition, seq):
                raise VerificationError(
                    f"{where}: the header names {header.ledger}/{header.partition} seq {header.seq}"
                )
            if header.payload_hash != payload_hash:
                raise VerificationError(f"{where}: payload_hash differs from the header's")
            payload = item.get("payload")
            if payload is not None:
                content = _b64(payload, f"{where}: payload")
                if (
                    len(content) != header.payload_size
                    or hashlib.sha256(content).digest() != payload_hash
                ):
                    raise VerificationError(
                        f"{where}: the payload is not the one the entry's header fingerprints"
                    )
        elif not hashes_only:
            raise VerificationError(f"{where}: header bytes are missing")
        else:
            entry = None
            payload = None
        try:
            verify_inclusion(leaf, seq, cp.tree_size, proof, cp.root_hash)
        except VerificationError as exc:
            raise VerificationError(f"{where}: the inclusion proof fails: {exc}") from None
        report.entries.append(seq)
        if entry is not None:
            h = entry.header
            content_word = (
                "content included and matches its fingerprint"
                if payload is not None
                else "content not included"
            )
            report.facts.append(
                f"entry seq {seq} is in the signed log: time {h.timestamp_ms} ms, producer "
                f"{h.producer!r}, {content_word} (sha256 {payload_hash.hex()[:16]}...)"
            )
        else:
            report.facts.append(
                f"entry seq {seq} (fingerprint {leaf.hex()[:16]}...) is in the signed log; "
                f"its content is withheld; the content fingerprint {payload_hash.hex()[:16]}... "
                "is as stated by the exporter (the entry's header would prove it)"
            )

    membership = data.get("membership")
    if membership is not None:
        report.warnings.append("a membership document is included; this version does not check it")

    proven_forks = []
    for number, raw_alert in enumerate(data.get("alerts") or []):
        try:
            alert = WitnessAlert.from_json(raw_alert)
            refused = verify_checkpoint(alert.refused, list(log_keys)).checkpoint
            cosigned = (
                verify_checkpoint(alert.cosigned, list(log_keys)).checkpoint
                if alert.cosigned
                else None
            )
        except StreamledgerError as exc:
            report.warnings.append(f"alert #{number} could not be checked ({exc}); ignored")
            continue
        if (
            cosigned is not None
            and cosigned.tree_size == refused.tree_size
            and (cosigned.root_hash != refused.root_hash)
        ):
            proven_forks.append(
                f"the log key signed two different trees of {refused.tree_size} entries "
                f"(reported by witness {alert.witness_name})"
            )
        else:
            sizes = f"{cosigned.tree_size} and {refused.tree_size}" if cosigned else "?"
            report.warnings.append(
                f"witness {alert.witness_name} refused a checkpoint ({alert.reason}): the log "
                f"key signed checkpoints of sizes {sizes} that it found inconsistent with the "
                f"ledger data: {alert.detail}"
            )
    if proven_forks:
        raise VerificationError(
            "the bundle contains proof that the log's history forked: " + "; ".join(proven_forks)
        )
    return report
