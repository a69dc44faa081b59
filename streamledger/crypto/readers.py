"""Reader keys (X25519) and key wrapping with HPKE (RFC 9180).

A *reader* is an organization or a role entitled to read a ledger's payloads. It owns an
X25519 key pair: the private key stays in its key directory (file mode 0600), the public key
is shareable text ``X25519+<name>+<base64>``. Data keys are wrapped for a reader with HPKE in
base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM: the native
``cryptography.hazmat.primitives.hpke`` when the installed ``cryptography`` has it (48+),
otherwise the same RFC 9180 computation written out here (the two interoperate; a test
checks it). Nothing here ever puts private key bytes into a repr, an error or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streamledger.core.note import validate_key_name
from streamledger.errors import ConfigError, FormatError

PUBLIC_PREFIX = "X25519+"
PRIVATE_PREFIX = "PRIVATE+X25519+"

try:  # cryptography >= 48
    from cryptography.hazmat.primitives import hpke as _hpke

    _NATIVE = _hpke.Suite(_hpke.KEM.X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.AES_256_GCM)
except (ImportError, AttributeError):  # pragma: no cover - depends on the installed version
    _NATIVE = None

HPKE_SUITE = "HPKE-Base/DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise FormatError(f"{what} is not valid base64") from None


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_name(name: str) -> str:
    try:
        validate_key_name(name)
    except ValueError as exc:
        raise ConfigError(f"invalid reader name {name!r}: {exc}") from None
    return name


class ReaderPublicKey:
    """The shareable half of a reader key: ``X25519+<name>+<base64 of 32 bytes>``."""

    __slots__ = ("name", "raw", "_key")

    def __init__(self, name: str, raw: bytes) -> None:
        _check_name(name)
        if len(raw) != 32:
            raise FormatError(f"an X25519 public key is 32 bytes, got {len(raw)}")
        self.name = name
        self.raw = bytes(raw)
        self._key = X25519PublicKey.from_public_bytes(self.raw)

    @classmethod
    def parse(cls, text: str) -> ReaderPublicKey:
        text = text.strip()
        if text.startswith("PRIVATE+"):
            raise ConfigError(
                "the text given is a PRIVATE reader key, not a public one: share the output "
                "of 'streamledger keys show NAME --public'"
            )
        parts = text.split("+", 2)  # names hold no '+'; base64 may
        if len(parts) != 3 or parts[0] + "+" != PUBLIC_PREFIX:
            raise FormatError("a reader public key looks like X25519+NAME+BASE64")
        return cls(parts[1], _unb64(parts[2], "reader public key"))

    @property
    def fingerprint(self) -> str:
        """Short id of the key (16 hex digits of SHA-256 over name and key)."""
        return hashlib.sha256(self.name.encode() + b"\n" + self.raw).hexdigest()[:16]

    def __str__(self) -> str:
        return f"{PUBLIC_PREFIX}{self.name}+{_b64(self.raw)}"

    def __repr__(self) -> str:
        return f"ReaderPublicKey(name={self.name!r}, fingerprint={self.fingerprint})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReaderPublicKey) and (self.name, self.raw) == (
            other.name,
            other.raw,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.raw))

    def wrap(self, secret: bytes, info: bytes) -> bytes:
        """HPKE-seal ``secret`` to this key; ``info`` binds the context (ledger, epoch...)."""
        if _NATIVE is not None:
            return _NATIVE.encrypt(secret, self._key, info=info)
        return _hpke_seal(self._key, secret, info)


class ReaderKey:
    """A reader's private X25519 key. Its repr and str show the name and fingerprint only."""

    __slots__ = ("name", "_private", "public")

    def __init__(self, name: str, private: X25519PrivateKey) -> None:
        self.name = _check_name(name)
        self._private = private
        self.public = ReaderPublicKey(name, _raw_public(private.public_key()))

    @classmethod
    def generate(cls, name: str) -> ReaderKey:
        return cls(name, X25519PrivateKey.generate())

    @classmethod
    def from_private_text(cls, text: str) -> ReaderKey:
        text = text.strip()
        parts = text.split("+", 3)
        if len(parts) != 4 or parts[0] + "+" + parts[1] + "+" != PRIVATE_PREFIX:
            raise FormatError("not a reader private key (PRIVATE+X25519+NAME+BASE64)")
        raw = _unb64(parts[3], "reader private key")
        if len(raw) != 32:
            raise FormatError("a reader private key holds 32 bytes")
        return cls(parts[2], X25519PrivateKey.from_private_bytes(raw))

    def private_text(self) -> str:
        """The key file's content. Only :class:`~streamledger.keys.KeyStore` writes it."""
        raw = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return f"{PRIVATE_PREFIX}{self.name}+{_b64(raw)}"

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes:
        """Open an HPKE-sealed secret; FormatError (naming nothing secret) if it fails."""
        try:
            if _NATIVE is not None:
                return _NATIVE.decrypt(wrapped, self._private, info=info)
            return _hpke_open(self._private, wrapped, info)
        except (InvalidTag, ValueError, Exception) as exc:  # noqa: BLE001 - never leak details
            raise FormatError(
                f"reader key {self.name!r} cannot open this wrapped key ({type(exc).__name__})"
            ) from None

    def __repr__(self) -> str:
        return f"ReaderKey(name={self.name!r}, fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("ReaderKey cannot be pickled; use private_text() explicitly")


# -- RFC 9180 base mode, written out (used when cryptography has no hpke module) ------------
_KEM_ID, _KDF_ID, _AEAD_ID = 0x0020, 0x0001, 0x0002
_KEM_SUITE = b"KEM" + _KEM_ID.to_bytes(2, "big")
_HPKE_SUITE = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (_KEM_ID, _KDF_ID, _AEAD_ID))


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def _shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + pk_r, 32)


def _key_schedule(shared: bytes, info: bytes) -> tuple[bytes, bytes]:
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, 32)
    nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, 12)
    return key, nonce


def _hpke_seal(pk_r: X25519PublicKey, plaintext: bytes, info: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    enc = _raw_public(ephemeral.public_key())
    shared = _shared_secret(ephemeral.exchange(pk_r), enc, _raw_public(pk_r))
    key, nonce = _key_schedule(shared, info)
    return enc + AESGCM(key).encrypt(nonce, plaintext, b"")


def _hpke_open(sk_r: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    if len(sealed) < 32 + 16:
        raise ValueError("sealed key too short")
    enc = sealed[:32]
    dh = sk_r.exchange(X25519PublicKey.from_public_bytes(enc))
    shared = _shared_secret(dh, enc, _raw_public(sk_r.public_key()))
    key, nonce = _key_schedule(shared, info)
    return AESGCM(key).decrypt(nonce, sealed[32:], b"")
