"""``streamledger demo``: the whole story in one command, on the embedded store (or Kafka).

1. create a signing key and a ``payments`` ledger with 3 partitions;
2. stream synthetic payments into it, with progress;
3. sign checkpoints and verify the ledger;
4. alter one stored payment (in a copy of the store on SQLite; on Kafka, a rogue producer
   writes a forged payment straight into the topic) and show the report naming it;
5. write an inclusion proof and verify it offline with only the proof file and the key.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from streamledger.backends.base import Backend
from streamledger.backends.sqlite import DB_NAME, SQLiteBackend
from streamledger.cli.commands import data_dir, kafka_bootstrap, print_report
from streamledger.cli.main import EXIT_ERROR, EXIT_OK
from streamledger.core.entry import decode_record
from streamledger.core.proof import load_proof
from streamledger.core.verify import TrustPolicy
from streamledger.errors import ConfigError
from streamledger.keys import KeyStore
from streamledger.ledger import AppendItem, Ledger

MARKER = ".streamledger-demo"
KEY_NAME = "demo.example/payments-log"
TAMPER_PARTITION = 1
TAMPER_SEQ = 42


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(number: int, text: str) -> None:
    _say(f"\n[{number}/5] {text}")


def _payments(count: int, seed: int = 7):
    rng = random.Random(seed)
    accounts = [f"acct-{i:05d}" for i in range(2_000)]
    start = 1_764_000_000_000
    for i in range(count):
        payer, payee = rng.sample(accounts, 2)
        body = {
            "payment_id": f"pay-{i:08d}",
            "ts_ms": start + i * 37,
            "payer": payer,
            "payee": payee,
            "amount_cents": rng.randint(100, 5_000_000),
            "currency": rng.choice(["EUR", "USD", "GBP", "CHF"]),
        }
        yield AppendItem(
            json.dumps(body, separators=(",", ":")).encode(), payer.encode(), "application/json"
        )


def _fresh_dir(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            raise ConfigError(f"{path} exists and was not made by the demo; not touching it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by 'streamledger demo'; safe to delete\n")


def _stream(ledger: Ledger, count: int) -> float:
    from rich.progress import Progress

    started = time.perf_counter()
    batch: list[AppendItem] = []
    done = 0
    with Progress(transient=True, disable=not sys.stdout.isatty()) as progress:
        task = progress.add_task("appending payments", total=count)
        for item in _payments(count):
            batch.append(item)
            if len(batch) == 1000:
                ledger.append_many(batch)
                done += len(batch)
                batch.clear()
                progress.update(task, completed=done)
        if batch:
            ledger.append_many(batch)
            done += len(batch)
            progress.update(task, completed=done)
    return time.perf_counter() - started


def _tamper_sqlite_copy(source_dir: Path, copy_dir: Path, ledger: str) -> tuple[str, str]:
    """Copy the store, change one payment's amount in the copy. Returns (before, after)."""
    copy_dir.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source_dir / DB_NAME)
    dst = sqlite3.connect(copy_dir / DB_NAME)
    with dst:
        src.backup(dst)
    src.close()
    (lid,) = dst.execute("SELECT id FROM ledgers WHERE name=?", (ledger,)).fetchone()
    (record,) = dst.execute(
        "SELECT record FROM entries WHERE ledger_id=? AND partition=? AND position=?",
        (lid, TAMPER_PARTITION, TAMPER_SEQ),
    ).fetchone()
    entry = decode_record(bytes(record))
    payment = json.loads(entry.payload or b"{}")
    before = f"{payment['amount_cents'] / 100:.2f} {payment['currency']}"
    payment["amount_cents"] *= 100
    after = f"{payment['amount_cents'] / 100:.2f} {payment['currency']}"
    forged = entry.header_bytes + json.dumps(payment, separators=(",", ":")).encode()
    with dst:
        dst.execute(
            "UPDATE entries SET record=? WHERE ledger_id=? AND partition=? AND position=?",
            (forged, lid, TAMPER_PARTITION, TAMPER_SEQ),
        )
    dst.close()
    return before, after


def _tamper_kafka(backend: Backend, bootstrap: str, config: dict, ledger: Ledger) -> str:
    """A rogue producer writes a forged payment straight into the ledger topic."""
    from confluent_kafka import Producer

    from streamledger.core.entry import build_record

    head = backend.head(ledger.name, TAMPER_PARTITION)
    record, _ = build_record(
        ledger.name,
        TAMPER_PARTITION,
        head.size,
        int(time.time() * 1000),
        "mallory",
        "application/json",
        b"acct-00001",
        bytes(32),  # the forger does not bother with the chain
        b'{"payment_id":"pay-forged","payer":"acct-00001","payee":"mallory",'
        b'"amount_cents":99999999,"currency":"EUR"}',
    )
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    producer.produce(ledger.name, record, partition=TAMPER_PARTITION)
    producer.flush(10)
    return f"forged payment written to partition {TAMPER_PARTITION} at seq {head.size}"


def run_demo(args: argparse.Namespace) -> int:
    if args.entries < 100:
        raise ConfigError("--entries must be at least 100")
    root = data_dir(args) / "demo"
    _fresh_dir(root)
    keys = KeyStore(root / "keys")
    bootstrap = kafka_bootstrap(args) if args.kafka else None
    if args.kafka and not bootstrap:
        raise ConfigError(
            "demo --kafka needs a broker: start one with 'python tools/kafka/local_kafka.py "
            "start' and pass --bootstrap-servers 127.0.0.1:9092 (or set STREAMLEDGER_KAFKA)"
        )

    _step(1, "create a signing key and a 'payments' ledger with 3 partitions")
    vkey = keys.generate(KEY_NAME)
    signer = keys.load(KEY_NAME)
    _say(f"  key file {keys.key_path(KEY_NAME)} (mode 0600)")
    _say(f"  verifier key (what an auditor trusts): {vkey}")
    backend: Backend
    if bootstrap:
        from streamledger.backends.kafka import KafkaBackend

        backend = KafkaBackend(
            bootstrap, config=dict(args.kafka_config), state_dir=root / "kafka-cache"
        )
        name = f"payments-demo-{int(time.time())}"
    else:
        backend = SQLiteBackend(root / "store")
        name = "payments"
    try:
        ledger = Ledger.create(backend, name, partitions=3, signer=signer, producer="demo-bank")
        where = f"Kafka topic {name!r} on {bootstrap}" if bootstrap else str(root / "store")
        _say(f"  ledger {name!r} in {where}")

        _step(2, f"stream {args.entries:,} synthetic payments (keyed by payer account)")
        seconds = _stream(ledger, args.entries)
        sizes = [ledger.size(p) for p in range(3)]
        _say(
            f"  appended {sum(sizes):,} entries in {seconds:.2f} s "
            f"({sum(sizes) / seconds:,.0f}/s); partition sizes {sizes}"
        )

        _step(3, "sign checkpoints (C2SP tlog-checkpoint) and verify the whole ledger")
        notes = ledger.checkpoint()
        _say("  checkpoint of partition 1:")
        for line in notes[TAMPER_PARTITION].splitlines():
            _say(f"    {line}")
        trust = TrustPolicy((vkey,))
        report = ledger.verify(trust)
        print_report(report)
        if not report.ok:
            _say("  unexpected: the honest ledger did not verify")
            return EXIT_ERROR

        _step(4, "tamper with one stored payment and verify again")
        if bootstrap:
            _say("  " + _tamper_kafka(backend, bootstrap, dict(args.kafka_config), ledger))
            tampered_report = ledger.verify(trust)
        else:
            copy = root / "tampered-copy"
            before, after = _tamper_sqlite_copy(root / "store", copy, name)
            _say(
                f"  in a copy of the store ({copy}), the amount of payment seq {TAMPER_SEQ} "
                f"in partition {TAMPER_PARTITION} is changed from {before} to {after}"
            )
            tampered_backend = SQLiteBackend(copy, create=False)
            try:
                tampered_report = Ledger(tampered_backend, name).verify(trust)
            finally:
                tampered_backend.close()
        print_report(tampered_report)
        if tampered_report.ok:
            _say("  unexpected: tampering was not detected")
            return EXIT_ERROR

        _step(
            5,
            f"prove payment seq {TAMPER_SEQ} of partition {TAMPER_PARTITION} is in the "
            "signed ledger, and check the proof offline",
        )
        proof = ledger.prove_inclusion(TAMPER_PARTITION, TAMPER_SEQ, trust=trust)
        proof_path = root / "inclusion-proof.json"
        proof_path.write_text(json.dumps(proof.to_json(), indent=2) + "\n")
        _say(f"  proof written to {proof_path} ({len(proof.proof)} hashes)")
        _say("  offline check with only the proof file and the verifier key:")
        facts = load_proof(proof_path.read_text()).verify([vkey])
        for fact in facts:
            _say(f"    ✓ {fact}")
        _say(
            "\nTry it yourself:\n"
            f"  streamledger proof verify {proof_path} --vkey '{vkey}'\n"
            f"  streamledger --data-dir {root / 'store'} verify {name} --vkey '{vkey}'"
            if not bootstrap
            else f"\nLedger topic: {name}"
        )
    finally:
        backend.close()
    return EXIT_OK
