"""Per-ledger data keys in numbered epochs, wrapped for each reader; payload encryption.

Documents of kind ``keys`` beside the ledger (a table on SQLite, ``<ledger>.documents`` on
Kafka), JSON, never hashed into the log:

- ``epoch/<N>``: the manifest of epoch N: its readers (name -> public key), the admin
  reader, why the epoch started. A later manifest of the same epoch (a grant) replaces it.
- ``wrap/<N>/<reader>``: epoch N's 32-byte data key, HPKE-sealed to that reader's X25519 key.

When the ledger has a signing key, every document is signed with it and readers accept only
documents signed by a trusted key (default: the verifier key recorded at ``init``), so
someone who can write to the documents topic cannot slip in a key of their own choosing.

Per-subject keys (crypto-shredding) live in a :mod:`~streamledger.crypto.subjects` store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streamledger.core.entry import Entry
from streamledger.core.note import SigningKey, VerifierKey
from streamledger.crypto.envelope import (
    NONCE_SIZE,
    DecryptionError,
    aad_prefix,
    aad_tail,
    encrypted_type,
    envelope_prefix,
    is_encrypted_type,
    original_type,
    parse_envelope,
)
from streamledger.crypto.readers import HPKE_SUITE, ReaderKey, ReaderPublicKey
from streamledger.crypto.subjects import SubjectKeyStore, subject_store_for
from streamledger.errors import ConfigError, FormatError

KIND = "keys"
ERASURES = "erasures"
_SIGN_LABEL = b"streamledger keys document v1\n"
_SUBJECT_AAD = b"streamledger subject key v1\x00"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def wrap_info(ledger: str, epoch: int, reader: ReaderPublicKey) -> bytes:
    """HPKE ``info``: binds a wrapped key to its ledger, epoch and reader."""
    return (
        b"streamledger data key v1\x00"
        + ledger.encode()
        + b"\x00"
        + epoch.to_bytes(4, "big")
        + reader.name.encode()
        + b"\x00"
        + reader.raw
    )


def subject_ref(epoch_key: bytes, subject: str) -> bytes:
    """16-byte pseudonym of a subject id in one epoch (the id itself never leaves the writer)."""
    return hmac.new(
        epoch_key, b"streamledger subject ref v1\x00" + subject.encode("utf-8"), hashlib.sha256
    ).digest()[:16]


# -- documents ----------------------------------------------------------------------------
def _canonical(body: dict[str, Any]) -> bytes:
    clean = {k: v for k, v in body.items() if k not in ("sig", "signer")}
    return _SIGN_LABEL + json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()


def _encode_doc(body: dict[str, Any], signer: SigningKey | None) -> bytes:
    if signer is not None:
        body = dict(body, signer=str(signer.verifier))
        body["sig"] = base64.b64encode(signer.sign(_canonical(body))).decode()
    return json.dumps(body, sort_keys=True).encode()


def _decode_doc(value: bytes, trust: Sequence[VerifierKey]) -> dict[str, Any] | None:
    """The document if it parses and (when ``trust`` is given) carries a trusted signature."""
    try:
        body = json.loads(value)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("v") != 1:
        return None
    if trust:
        try:
            sig = base64.b64decode(body["sig"])
        except (KeyError, ValueError, TypeError):
            return None
        message = _canonical(body)
        if not any(str(k) == body.get("signer") and k.verify(message, sig) for k in trust):
            return None
    return body


@dataclass(frozen=True)
class EpochManifest:
    epoch: int
    readers: dict[str, ReaderPublicKey]
    admin: str
    reason: str
    created_ms: int
    signed: bool


class Keyring:
    """The ``keys`` documents of one ledger: manifests and wrapped data keys."""

    def __init__(
        self, backend: Any, ledger: str, *, trust: Sequence[VerifierKey] | None = None
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        if trust is None:
            vkey = backend.ledger_config(ledger).log_vkey
            trust = (VerifierKey.parse(vkey),) if vkey else ()
        self.trust = tuple(trust)

    def __repr__(self) -> str:
        return f"Keyring({self.ledger!r})"

    def _docs(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for key, value in self.backend.documents(self.ledger, KIND):
            body = _decode_doc(value, self.trust)
            if body is not None and body.get("ledger") == self.ledger:
                out.append((key, body))
        return out

    def manifests(self) -> dict[int, EpochManifest]:
        result: dict[int, EpochManifest] = {}
        for key, body in self._docs():
            if not key.startswith("epoch/"):
                continue
            try:
                epoch = int(body["epoch"])
                readers = {n: ReaderPublicKey.parse(t) for n, t in body["readers"].items()}
                if key != f"epoch/{epoch}":
                    continue
                result[epoch] = EpochManifest(
                    epoch,
                    readers,
                    str(body["admin"]),
                    str(body.get("reason", "")),
                    int(body.get("created_ms", 0)),
                    "sig" in body,
                )
            except (KeyError, TypeError, ValueError, FormatError, ConfigError):
                continue
        return dict(sorted(result.items()))

    def is_encrypted(self) -> bool:
        return bool(self.manifests())

    def current(self) -> EpochManifest:
        manifests = self.manifests()
        if not manifests:
            raise ConfigError(
                f"ledger {self.ledger!r} is not encrypted (no key epochs): create it with "
                "'init --encrypt --reader NAME'"
            )
        return manifests[max(manifests)]

    def unwrap(self, reader: ReaderKey) -> dict[int, bytes]:
        """Every epoch key wrapped for ``reader`` (and listed for it in its epoch manifest)."""
        manifests = self.manifests()
        keys: dict[int, bytes] = {}
        for key, body in self._docs():
            if not key.startswith("wrap/") or body.get("reader") != reader.name:
                continue
            try:
                epoch = int(body["epoch"])
                wrapped = base64.b64decode(body["wrapped"])
            except (KeyError, TypeError, ValueError):
                continue
            manifest = manifests.get(epoch)
            if manifest is None or manifest.readers.get(reader.name) != reader.public:
                continue
            if body.get("reader_key") != reader.fingerprint:
                continue
            try:
                secret = reader.unwrap(wrapped, wrap_info(self.ledger, epoch, reader.public))
            except FormatError:
                continue
            if len(secret) == 32:
                keys[epoch] = secret
        return keys

    # -- changes ---------------------------------------------------------------------------
    def _publish_epoch(
        self,
        epoch: int,
        key: bytes | None,
        readers: dict[str, ReaderPublicKey],
        admin: str,
        reason: str,
        signer: SigningKey | None,
        wrap_for: Iterable[str] | None = None,
    ) -> None:
        if self.trust and signer is None:
            raise ConfigError(
                f"ledger {self.ledger!r} signs its key documents: the ledger's signing key is "
                "needed to change them"
            )
        for name in readers if wrap_for is None else wrap_for:
            pub = readers[name]
            assert key is not None
            doc = {
                "v": 1,
                "ledger": self.ledger,
                "epoch": epoch,
                "reader": name,
                "reader_key": pub.fingerprint,
                "alg": HPKE_SUITE,
                "wrapped": base64.b64encode(
                    pub.wrap(key, wrap_info(self.ledger, epoch, pub))
                ).decode(),
            }
            self.backend.put_document(
                self.ledger, KIND, f"wrap/{epoch}/{name}", _encode_doc(doc, signer)
            )
        manifest = {
            "v": 1,
            "ledger": self.ledger,
            "epoch": epoch,
            "readers": {n: str(p) for n, p in sorted(readers.items())},
            "admin": admin,
            "reason": reason,
            "created_ms": _now_ms(),
            "cipher": "AES-256-GCM",
        }
        self.backend.put_document(
            self.ledger, KIND, f"epoch/{epoch}", _encode_doc(manifest, signer)
        )

    def enable(
        self,
        readers: Sequence[ReaderPublicKey],
        *,
        signer: SigningKey | None = None,
    ) -> int:
        """Start epoch 1 for ``readers``; the first one is the admin (the writer's reader)."""
        if not readers:
            raise ConfigError("an encrypted ledger needs at least one reader (--reader NAME)")
        if self.manifests():
            raise ConfigError(f"ledger {self.ledger!r} is already encrypted")
        by_name = {r.name: r for r in readers}
        self._publish_epoch(1, AESGCM.generate_key(256), by_name, readers[0].name, "init", signer)
        return 1

    def rotate(
        self,
        *,
        signer: SigningKey | None = None,
        remove: Iterable[str] = (),
        reason: str = "rotate",
    ) -> int:
        """Start a new epoch with a fresh data key, wrapped for the current readers minus
        ``remove``. Entries appended from now on use it."""
        current = self.current()
        readers = dict(current.readers)
        for name in remove:
            if name not in readers:
                raise ConfigError(
                    f"{name!r} is not a reader of ledger {self.ledger!r} "
                    f"(readers: {', '.join(sorted(readers))})"
                )
            del readers[name]
        if not readers:
            raise ConfigError("cannot revoke the last reader of a ledger")
        admin = current.admin if current.admin in readers else sorted(readers)[0]
        epoch = current.epoch + 1
        self._publish_epoch(epoch, AESGCM.generate_key(256), readers, admin, reason, signer)
        return epoch

    def revoke(self, name: str, *, signer: SigningKey | None = None) -> int:
        return self.rotate(signer=signer, remove=[name], reason=f"revoke {name}")

    def grant(
        self,
        admin: ReaderKey,
        reader: ReaderPublicKey,
        *,
        signer: SigningKey | None = None,
        history: bool = True,
    ) -> list[int]:
        """Wrap the current epoch key (and with ``history`` every earlier one ``admin``
        holds) for ``reader``; it becomes a reader of the current and later epochs."""
        current = self.current()
        held = self.unwrap(admin)
        if current.epoch not in held:
            raise ConfigError(
                f"reader {admin.name!r} holds no key for epoch {current.epoch} of ledger "
                f"{self.ledger!r}: grant with an authorized reader (--as NAME)"
            )
        epochs = sorted(held) if history else [current.epoch]
        manifests = self.manifests()
        for epoch in epochs:
            readers = dict(manifests[epoch].readers)
            readers[reader.name] = reader
            self._publish_epoch(
                epoch,
                held[epoch],
                readers,
                manifests[epoch].admin,
                f"grant {reader.name}" if epoch == current.epoch else manifests[epoch].reason,
                signer,
                wrap_for=[reader.name],
            )
        return epochs


# -- the encryptor the ledger calls ----------------------------------------------------------
@dataclass(frozen=True)
class DecryptedEntry:
    """An entry with its plaintext: ``payload`` and the original ``content_type``."""

    entry: Entry
    payload: bytes
    content_type: str
    epoch: int | None


class LedgerEncryption:
    """Encrypts a ledger's payloads as it appends, decrypts as it reads, with the epoch keys
    the given reader holds. Pass it to :class:`~streamledger.ledger.Ledger` as ``encryption``.

    Appends use the newest epoch; the reader must hold its key. ``refresh()`` reloads keys
    (after a rotation by another process)."""

    def __init__(
        self,
        backend: Any,
        ledger: str,
        reader: ReaderKey,
        *,
        subjects: SubjectKeyStore | None = None,
        trust: Sequence[VerifierKey] | None = None,
    ) -> None:
        self.ledger = ledger
        self.reader = reader
        self.keyring = Keyring(backend, ledger, trust=trust)
        self._backend = backend
        self._subjects = subjects
        self._lock = threading.Lock()
        self.refresh()

    def __repr__(self) -> str:
        return (
            f"LedgerEncryption({self.ledger!r}, reader={self.reader.name!r}, "
            f"epochs={sorted(self._keys)})"
        )

    def refresh(self) -> None:
        with self._lock:
            self._keys = self.keyring.unwrap(self.reader)
            self._aeads = {e: AESGCM(k) for e, k in self._keys.items()}
            self._subject_aeads: dict[tuple[int, str], tuple[bytes, AESGCM]] = {}
            self._by_ref: dict[tuple[int, bytes], AESGCM] = {}
            manifests = self.keyring.manifests()
            self.current_epoch = max(manifests) if manifests else None

    @property
    def epochs(self) -> list[int]:
        return sorted(self._keys)

    @property
    def subjects(self) -> SubjectKeyStore:
        if self._subjects is None:
            self._subjects = subject_store_for(self._backend)
        return self._subjects

    def _write_epoch(self) -> int:
        epoch = self.current_epoch
        if epoch is None:
            raise ConfigError(f"ledger {self.ledger!r} is not encrypted")
        if epoch not in self._keys:
            raise ConfigError(
                f"reader {self.reader.name!r} holds no key for the current epoch {epoch} of "
                f"ledger {self.ledger!r}: it cannot write encrypted entries"
            )
        return epoch

    # -- subjects ----------------------------------------------------------------------
    def _subject_name(self, epoch: int, ref: bytes, kid: bytes) -> str:
        return f"{epoch}/{ref.hex()}/{kid.hex()}"

    def _subject_aad(self, name: str) -> bytes:
        return _SUBJECT_AAD + self.ledger.encode() + b"\x00" + name.encode()

    def _subject_key(self, epoch: int, subject: str) -> tuple[bytes, AESGCM]:
        cached = self._subject_aeads.get((epoch, subject))
        if cached is not None:
            return cached
        ref = subject_ref(self._keys[epoch], subject)
        prefix = f"{epoch}/{ref.hex()}/"
        existing = self.subjects.names(self.ledger, prefix)
        aead = None
        if existing:
            name = existing[0]
            kid = bytes.fromhex(name[len(prefix) :])
            aead = self._open_subject(epoch, name)
        if aead is None:
            kid = os.urandom(8)
            name = self._subject_name(epoch, ref, kid)
            key = AESGCM.generate_key(256)
            nonce = os.urandom(NONCE_SIZE)
            wrapped = nonce + self._aeads[epoch].encrypt(nonce, key, self._subject_aad(name))
            self.subjects.put(self.ledger, name, wrapped)
            aead = AESGCM(key)
        result = (ref + kid, aead)
        self._subject_aeads[(epoch, subject)] = result
        self._by_ref[(epoch, ref + kid)] = aead
        return result

    def _open_subject(self, epoch: int, name: str) -> AESGCM | None:
        wrapped = self.subjects.get(self.ledger, name)
        if wrapped is None:
            return None
        try:
            key = self._aeads[epoch].decrypt(
                wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], self._subject_aad(name)
            )
        except InvalidTag:
            return None
        return AESGCM(key)

    def erase(self, subject: str) -> dict[str, Any]:
        """Crypto-shred ``subject``: delete its keys of every epoch this reader holds, and
        record the erasure (pseudonymous refs only, never the subject id) as a document."""
        names: list[str] = []
        refs: list[str] = []
        for epoch, key in sorted(self._keys.items()):
            ref = subject_ref(key, subject).hex()
            refs.append(f"{epoch}/{ref}")
            names.extend(self.subjects.names(self.ledger, f"{epoch}/{ref}/"))
        deleted = self.subjects.delete(self.ledger, names)
        missing = [e for e in (self.keyring.manifests() or {}) if e not in self._keys]
        record = {
            "v": 1,
            "ledger": self.ledger,
            "refs": refs,
            "keys_deleted": deleted,
            "epochs_not_held": missing,
            "erased_ms": _now_ms(),
        }
        self._backend.put_document(
            self.ledger,
            ERASURES,
            hashlib.sha256(json.dumps(refs).encode()).hexdigest()[:16],
            json.dumps(record, sort_keys=True).encode(),
        )
        with self._lock:
            self._subject_aeads = {k: v for k, v in self._subject_aeads.items() if k[1] != subject}
            self._by_ref = {
                k: v for k, v in self._by_ref.items() if f"{k[0]}/{k[1][:16].hex()}" not in refs
            }
        return record

    def _erased_refs(self) -> set[str]:
        erased: set[str] = set()
        for _, value in self._backend.documents(self.ledger, ERASURES):
            try:
                erased.update(json.loads(value).get("refs", []))
            except (ValueError, AttributeError):
                continue
        return erased

    # -- the hook ----------------------------------------------------------------------
    def encrypt_batch(
        self,
        partition: int,
        first_seq: int,
        items: list[tuple[bytes, bytes, str]],
        subjects: Sequence[str | None] | None = None,
    ) -> list[tuple[bytes, bytes, str]]:
        """Encrypt ``(payload, key, content_type)`` items that will be stored at seqs
        ``first_seq, first_seq + 1, ...`` of ``partition``. Called by the ledger's batch
        builder before hashing."""
        epoch = self._write_epoch()
        aead = self._aeads[epoch]
        plain_prefix = envelope_prefix(epoch)
        base = aad_prefix(self.ledger, partition)
        nonces = os.urandom(NONCE_SIZE * len(items))
        if subjects is None or not any(subjects):
            return self._encrypt_plain(aead, plain_prefix, base, first_seq, items, nonces)
        tails: dict[tuple[str, bytes], bytes] = {}
        types: dict[str, str] = {}
        out = []
        seq = first_seq
        for index, (payload, key, ctype) in enumerate(items):
            subject = subjects[index] if subjects is not None else None
            if subject is None:
                cipher, prefix = aead, plain_prefix
            else:
                ref, cipher = self._subject_key(epoch, subject)
                prefix = envelope_prefix(epoch, ref)
            tail = tails.get((ctype, prefix))
            if tail is None:
                tail = tails[(ctype, prefix)] = aad_tail(ctype, prefix)
            enc_type = types.get(ctype)
            if enc_type is None:
                enc_type = types[ctype] = self._enc_type(ctype)
            nonce = nonces[index * NONCE_SIZE : (index + 1) * NONCE_SIZE]
            sealed = cipher.encrypt(nonce, payload, base + seq.to_bytes(8, "big") + tail)
            out.append((prefix + nonce + sealed, key, enc_type))
            seq += 1
        return out

    def _encrypt_plain(
        self,
        aead: AESGCM,
        prefix: bytes,
        base: bytes,
        seq: int,
        items: list[tuple[bytes, bytes, str]],
        nonces: bytes,
    ) -> list[tuple[bytes, bytes, str]]:
        """The hot path: no per-subject keys, one epoch key for the whole batch."""
        encrypt = aead.encrypt
        tails: dict[str, tuple[bytes, str]] = {}
        out = []
        pos = 0
        for payload, key, ctype in items:
            cached = tails.get(ctype)
            if cached is None:
                cached = tails[ctype] = (aad_tail(ctype, prefix), self._enc_type(ctype))
            tail, enc_type = cached
            nonce = nonces[pos : pos + NONCE_SIZE]
            sealed = encrypt(nonce, payload, base + seq.to_bytes(8, "big") + tail)
            out.append((prefix + nonce + sealed, key, enc_type))
            pos += NONCE_SIZE
            seq += 1
        return out

    @staticmethod
    def _enc_type(ctype: str) -> str:
        enc_type = encrypted_type(ctype)
        if len(enc_type.encode()) > 255:
            raise FormatError(
                f"content type {ctype!r} is too long to be marked encrypted "
                f"(at most {255 - len(encrypted_type('').encode())} bytes)"
            )
        return enc_type

    # -- reading -------------------------------------------------------------------------
    def decrypt(self, entry: Entry) -> DecryptedEntry:
        """The plaintext of ``entry`` (unencrypted entries pass through unchanged).

        Raises :class:`DecryptionError` naming the entry if the payload is absent, altered,
        moved, encrypted under a key this reader does not hold, or of an erased subject."""
        header = entry.header
        where = f"ledger {header.ledger!r} partition {header.partition} seq {header.seq}"
        if not is_encrypted_type(header.content_type):
            if entry.payload is None:
                raise DecryptionError(f"{where}: payload absent")
            return DecryptedEntry(entry, entry.payload, header.content_type, None)
        if entry.payload is None:
            raise DecryptionError(f"{where}: encrypted payload absent")
        if not entry.payload_matches():
            raise DecryptionError(
                f"{where}: the stored ciphertext does not match the hash in the entry header "
                f"(payload modified); run 'streamledger verify {header.ledger}'"
            )
        try:
            env = parse_envelope(entry.payload)
        except FormatError as exc:
            raise DecryptionError(f"{where}: not a valid encrypted envelope ({exc})") from None
        aead = self._aeads.get(env.epoch)
        if aead is None:
            raise DecryptionError(
                f"{where}: reader {self.reader.name!r} holds no key for epoch {env.epoch} "
                "(never granted, or revoked before that epoch)"
            )
        if env.ref:
            aead = self._by_ref.get((env.epoch, env.ref))
            if aead is None:
                name = self._subject_name(env.epoch, env.subject_ref, env.key_id)
                aead = self._open_subject(env.epoch, name)
                if aead is None:
                    erased = f"{env.epoch}/{env.subject_ref.hex()}" in self._erased_refs()
                    raise DecryptionError(
                        f"{where}: "
                        + (
                            "the payload's subject was erased (its key was destroyed); "
                            "the entry still verifies, its content is gone"
                            if erased
                            else "the key of the payload's subject is not in the subject key store"
                        )
                    )
                self._by_ref[(env.epoch, env.ref)] = aead
        ctype = original_type(header.content_type)
        aad = (
            aad_prefix(header.ledger, header.partition)
            + header.seq.to_bytes(8, "big")
            + aad_tail(ctype, env.prefix)
        )
        try:
            plain = aead.decrypt(env.nonce, env.ciphertext, aad)
        except InvalidTag:
            raise DecryptionError(
                f"{where}: authentication failed: the ciphertext was altered, moved here from "
                "another entry, or sealed under a different key"
            ) from None
        return DecryptedEntry(entry, plain, ctype, env.epoch)
