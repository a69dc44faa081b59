"""End-to-end CLI tests: every command runs the real ``streamledger`` program in a subprocess.

``python -m streamledger`` (the interpreter running pytest, so the editable install) is used
instead of the ``streamledger`` script on PATH, which may belong to another environment.

Every run is checked for two things that must never happen, whatever the command:
a Python traceback in its output, and private key material in its stdout or stderr. The
secrets are collected from every key file the tests create, and each new secret is also
checked against everything printed before it was known.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "tlog"
LEDGER_DB = "ledger.db"


@dataclass
class Result:
    args: list[str]
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return (
            f"streamledger {' '.join(self.args)}\n  exit {self.rc}\n"
            f"  stdout: {self.out[-2000:]!r}\n  stderr: {self.err[-2000:]!r}"
        )


class _Transcript:
    """Every output of the test session, and every private key secret seen so far."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str]] = []  # (command, text)
        self.secrets: set[str] = set()

    def check(self, command: str, text: str, secrets: set[str]) -> None:
        for secret in secrets:
            assert secret not in text, f"private key material printed by: {command}"

    def add_output(self, command: str, text: str) -> None:
        self.check(command, text, self.secrets)
        self.outputs.append((command, text))

    def add_key_file(self, path: Path) -> None:
        """Register the secret parts of a private key file (PRIVATE+KEY+name+hash+b64)."""
        text = path.read_text().strip()
        b64 = text.split("+", 4)[4]
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
        seed = raw[1:]
        new = {
            text,
            b64,
            b64.rstrip("="),
            seed.hex(),
            base64.b64encode(seed).decode().rstrip("="),
        }
        for command, out in self.outputs:
            self.check(command, out, new)
        self.secrets |= new


TRANSCRIPT = _Transcript()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("STREAMLEDGER_DATA_DIR", "STREAMLEDGER_KEYS_DIR", "STREAMLEDGER_KAFKA"):
        env.pop(name, None)
    env.pop("STREAMLEDGER_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


ENV = _env()


def streamledger(
    *args: str | Path,
    data_dir: Path | None = None,
    stdin: str | bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> Result:
    """Run ``streamledger [--data-dir D] ARGS...``; check it printed no traceback or secret."""
    argv = [str(a) for a in args]
    if data_dir is not None:
        argv = ["--data-dir", str(data_dir), *argv]
    if isinstance(stdin, str):
        stdin = stdin.encode()
    proc = subprocess.run(
        [sys.executable, "-m", "streamledger", *argv],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
    )
    result = Result(
        argv,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
    command = " ".join(argv)
    TRANSCRIPT.add_output(command, result.out)
    TRANSCRIPT.add_output(command, result.err)
    for text in (result.out, result.err):
        assert "Traceback" not in text, str(result)
        assert "internal error" not in text, str(result)
    return result


def ok(*args: str | Path, **kwargs) -> Result:
    """Run and expect exit 0."""
    result = streamledger(*args, **kwargs)
    assert result.rc == 0, str(result)
    return result


def fails(rc: int, *args: str | Path, **kwargs) -> Result:
    """Run and expect exit ``rc``; for exit 2, a one-line ``streamledger: error:`` message."""
    result = streamledger(*args, **kwargs)
    assert result.rc == rc, str(result)
    if rc == 2:
        assert_one_line_error(result)
    return result


def assert_one_line_error(result: Result) -> None:
    lines = [line for line in result.err.splitlines() if line.startswith("streamledger:")]
    assert len(lines) == 1, str(result)
    assert lines[0].startswith("streamledger: error: "), str(result)
    assert len(lines[0]) > len("streamledger: error: ") + 10, str(result)


def generate_key(data_dir: Path, name: str) -> str:
    """``keys generate NAME``; registers the new secret; returns the vkey line."""
    result = ok("keys", "generate", name, data_dir=data_dir)
    key_files = list((data_dir / "keys").glob("*.key"))
    for path in key_files:
        TRANSCRIPT.add_key_file(path)
    return result.out.strip()


def make_ledger(data_dir: Path, name: str = "payments", partitions: int = 3, key: str = "K") -> str:
    """A ledger with a signing key; returns the key's vkey line."""
    vkey = generate_key(data_dir, key)
    ok("init", name, "--partitions", str(partitions), "--signing-key", key, data_dir=data_dir)
    return vkey


def copy_store(source: Path, target: Path) -> Path:
    """A copy of a data directory (database, WAL and keys)."""
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def populated(tmp_path_factory) -> tuple[Path, str]:
    """A checkpointed 3-partition ``payments`` ledger of 300 entries (read-only: copy it
    with :func:`copy_store` before changing anything). Returns (data_dir, vkey)."""
    data_dir = tmp_path_factory.mktemp("populated") / "data"
    vkey = make_ledger(data_dir)
    lines = "".join(f'{{"payment":{i},"amount":{i * 7 % 1000}}}\n' for i in range(300))
    ok("append", "payments", data_dir=data_dir, stdin=lines)
    ok("checkpoint", "payments", data_dir=data_dir)
    return data_dir, vkey
