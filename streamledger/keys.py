"""Key files: Ed25519 signing keys in the C2SP private-key text form, one file per key.

``<keys_dir>/<name>.key`` holds ``PRIVATE+KEY+<name>+<hash>+<base64>`` and is created with
mode 0600 (never world- or group-readable); ``<name>.vkey`` holds the public verifier key.
Reader keys (X25519, for encrypted payloads) live beside them: ``<name>.reader`` (private,
mode 0600) and ``<name>.reader.pub`` (shareable text ``X25519+<name>+<base64>``).
Nothing here ever prints, logs or puts private key material into an error message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import quote

from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    KEY_TYPE_ED25519,
    SigningKey,
    VerifierKey,
    validate_key_name,
)
from streamledger.crypto.readers import ReaderKey, ReaderPublicKey
from streamledger.errors import ConfigError, FormatError


class KeyStore:
    """A directory of key files."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"KeyStore({str(self.directory)!r})"

    def _stem(self, name: str) -> Path:
        try:
            validate_key_name(name)
        except (FormatError, ValueError) as exc:
            raise ConfigError(f"invalid key name {name!r}: {exc}") from None
        return self.directory / quote(name, safe="")

    def key_path(self, name: str) -> Path:
        return self._stem(name).with_name(self._stem(name).name + ".key")

    def vkey_path(self, name: str) -> Path:
        return self._stem(name).with_name(self._stem(name).name + ".vkey")

    def generate(self, name: str, *, witness: bool = False) -> VerifierKey:
        """Create a new key (a witness cosigning key if ``witness``); refuse to overwrite."""
        path = self.key_path(name)
        key = SigningKey.generate(name, KEY_TYPE_COSIGNATURE if witness else KEY_TYPE_ED25519)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"key {name!r} already exists at {path}; not overwriting") from None
        except OSError as exc:
            raise ConfigError(f"cannot create key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(key.private_text() + "\n")
        self.vkey_path(name).write_text(str(key.verifier) + "\n")
        return key.verifier

    def load(self, name: str) -> SigningKey:
        """Load the signing key ``name``; ConfigError naming the file if it is missing or bad."""
        path = self.key_path(name)
        return load_key_file(path, expected_name=name)

    def vkey(self, name: str) -> VerifierKey:
        path = self.vkey_path(name)
        if path.exists():
            try:
                return VerifierKey.parse(path.read_text().strip())
            except FormatError as exc:
                raise ConfigError(f"verifier key file {path} is damaged: {exc}") from None
        return self.load(name).verifier

    def exists(self, name: str) -> bool:
        return self.key_path(name).exists()

    # -- reader keys (X25519, payload encryption) ------------------------------------------
    def reader_path(self, name: str) -> Path:
        """``<name>.reader``: the reader's private X25519 key (mode 0600)."""
        return self._stem(name).with_name(self._stem(name).name + ".reader")

    def reader_public_path(self, name: str) -> Path:
        return self._stem(name).with_name(self._stem(name).name + ".reader.pub")

    def generate_reader(self, name: str) -> ReaderPublicKey:
        """Create reader key ``name`` (X25519); refuse to overwrite; return its public key."""
        path = self.reader_path(name)
        key = ReaderKey.generate(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(
                f"reader key {name!r} already exists at {path}; not overwriting"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot create key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(key.private_text() + "\n")
        self.reader_public_path(name).write_text(str(key.public) + "\n")
        return key.public

    def load_reader(self, name: str) -> ReaderKey:
        """Load reader key ``name``; ConfigError naming the file (never its content)."""
        path = self.reader_path(name)
        text = read_private_file(
            path,
            f"no reader key {name!r} ({path}): create it with "
            f"'streamledger keys generate {name} --reader'",
        )
        try:
            key = ReaderKey.from_private_text(text)
        except (ConfigError, FormatError, ValueError):
            raise ConfigError(f"key file {path} is not a valid reader private key") from None
        if key.name != name:
            raise ConfigError(f"key file {path} holds reader {key.name!r}, not {name!r}")
        return key

    def reader_public(self, name: str) -> ReaderPublicKey:
        path = self.reader_public_path(name)
        if path.exists():
            try:
                return ReaderPublicKey.parse(path.read_text())
            except FormatError as exc:
                raise ConfigError(f"reader public key file {path} is damaged: {exc}") from None
        return self.load_reader(name).public

    def reader_exists(self, name: str) -> bool:
        return self.reader_path(name).exists()

    def reader_names(self) -> list[str]:
        from urllib.parse import unquote

        return sorted(unquote(p.name[: -len(".reader")]) for p in self.directory.glob("*.reader"))


def read_private_file(path: Path, missing: str) -> str:
    """The text of a private key file, refusing files other users can read. Errors name the
    file (``missing`` says what to do when it does not exist), never its contents."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run 'chmod 600 {path}'"
        )
    return text


def load_key_file(path: str | Path, *, expected_name: str | None = None) -> SigningKey:
    """Read a private key file. Errors name the file, never its contents."""
    path = Path(path)
    text = read_private_file(
        path, f"no key file {path}: create it with 'streamledger keys generate NAME'"
    )
    try:
        key = SigningKey.from_private_text(text)
    except (ConfigError, FormatError) as exc:
        # The parser's messages never quote the key text; add which file it was.
        raise ConfigError(f"key file {path} is not a valid private key: {exc}") from None
    if expected_name is not None and key.name != expected_name:
        raise ConfigError(f"key file {path} holds key {key.name!r}, not {expected_name!r}")
    return key


def load_vkey(text_or_path: str) -> VerifierKey:
    """A verifier key given as text (``name+hash+base64``) or as the path of a file holding it."""
    candidate = Path(text_or_path)
    text = text_or_path
    try:
        from_file = "+" not in text_or_path or candidate.is_file()
    except OSError:  # e.g. a name too long to be a path: treat it as key text
        from_file = False
    if from_file:
        try:
            text = candidate.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{text_or_path!r} is neither a verifier key (name+hash+base64) nor a "
                f"readable file: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{text_or_path!r} is not a verifier key file (not text)") from None
    if text.strip().startswith("PRIVATE+KEY+"):
        # Never echo it: this is secret key material given where a public key belongs.
        where = f"file {text_or_path!r}" if from_file else "the text given"
        raise ConfigError(
            f"{where} holds a PRIVATE key, not a verifier key: pass the verifier key "
            "('streamledger keys show NAME --vkey' prints it)"
        )
    try:
        return VerifierKey.parse(text.strip())
    except FormatError as exc:
        raise ConfigError(f"invalid verifier key {text_or_path!r}: {exc}") from None
