"""``streamledger`` command line: parse, call the API, print. No ledger logic lives here.

Exit codes: 0 success / clean, 1 tampering found or a proof did not verify, 2 usage or I/O
error (a bad option, a missing key, a broker that is down, malformed input).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from streamledger.consortium.cli import add_append_args, add_init_args
from streamledger.consortium.cli import add_commands as add_consortium_commands
from streamledger.errors import StreamledgerError, VerificationError

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_ERROR = 2

DEFAULT_DATA_DIR = ".streamledger"


class UsageError(StreamledgerError):
    """A command-line usage problem (exit 2)."""


def _kafka_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamledger",
        description="Tamper-evident ledgers on Apache Kafka or an embedded SQLite store.",
        epilog="Exit codes: 0 ok, 1 tampering found / proof rejected, 2 usage or I/O error.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded store and key directory (env STREAMLEDGER_DATA_DIR, "
        f"default ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
        default=None,
        help="directory of key files (env STREAMLEDGER_KEYS_DIR, default DATA_DIR/keys)",
    )
    parser.add_argument(
        "-b",
        "--bootstrap-servers",
        default=None,
        help="use the Kafka backend on this cluster (env STREAMLEDGER_KAFKA)",
    )
    parser.add_argument(
        "-X",
        "--kafka-config",
        action="append",
        type=_kafka_setting,
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting passed through unchanged (SASL, SSL, ...); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # keys
    keys = sub.add_parser("keys", help="signing and reader keys; grant, revoke, rotate")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    gen = keys_sub.add_parser("generate", help="create an Ed25519 key (file mode 0600)")
    gen.add_argument("name", help="key name, e.g. example.com/payments-log")
    gen.add_argument(
        "--witness", action="store_true", help="a witness cosigning key (tlog-cosignature)"
    )
    gen.add_argument(
        "--reader",
        action="store_true",
        help="an X25519 reader key for encrypted ledgers (prints the shareable public key)",
    )
    show = keys_sub.add_parser("show", help="print a key's verifier key")
    show.add_argument("name")
    show.add_argument("--vkey", action="store_true", help="print only the verifier key")
    show.add_argument(
        "--reader", action="store_true", help="print only the reader key's public key"
    )
    keys_sub.add_parser("list", help="list key names")
    grant = keys_sub.add_parser(
        "grant", help="encrypted ledger: wrap its data keys for a reader (all epochs)"
    )
    grant.add_argument("ledger")
    grant.add_argument("--reader", required=True, help="name of the reader to admit")
    grant.add_argument(
        "--reader-pub",
        help="the reader's public key X25519+NAME+BASE64 (or a file holding it); default: "
        "the local reader key NAME",
    )
    grant.add_argument("--current-only", action="store_true", help="no earlier epochs")
    _key_admin_args(grant)
    revoke = keys_sub.add_parser(
        "revoke", help="encrypted ledger: new epoch whose key the reader does not get"
    )
    revoke.add_argument("ledger")
    revoke.add_argument("--reader", required=True, help="name of the reader to revoke")
    _key_admin_args(revoke)
    rotate = keys_sub.add_parser("rotate", help="encrypted ledger: start a new key epoch")
    rotate.add_argument("ledger")
    _key_admin_args(rotate)
    epochs = keys_sub.add_parser("epochs", help="encrypted ledger: key epochs and readers")
    epochs.add_argument("ledger")

    # ledgers
    init = sub.add_parser("init", help="create a ledger")
    init.add_argument("ledger")
    init.add_argument("--partitions", type=int, default=1, help="number of logs (default 1)")
    init.add_argument("--signing-key", help="key that signs this ledger's checkpoints")
    init.add_argument(
        "--origin",
        default=None,
        help="checkpoint origin prefix (default streamledger.local): origins are "
        "ORIGIN/ledger/LEDGER/partition/P",
    )
    init.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt payloads (AES-256-GCM); needs --reader (the first one writes)",
    )
    init.add_argument(
        "--reader",
        action="append",
        default=[],
        help="--encrypt: local reader key NAME, or a public key X25519+NAME+BASE64; repeatable",
    )
    add_init_args(init)
    init.add_argument(
        "--replication-factor", type=int, default=None, help="Kafka: topic replication factor"
    )
    init.add_argument(
        "--min-insync-replicas", type=int, default=None, help="Kafka: min.insync.replicas"
    )
    sub.add_parser("ledgers", help="list ledgers")

    append = sub.add_parser("append", help="append entries: one per line of stdin or --file")
    append.add_argument("ledger")
    append.add_argument("--file", type=Path, help="read lines from this file instead of stdin")
    append.add_argument("--key", help="partition key for every entry (UTF-8)")
    append.add_argument("--partition", type=int, default=None, help="append to this partition")
    append.add_argument(
        "--content-type", default="text/plain; charset=utf-8", help="content type of the lines"
    )
    append.add_argument(
        "--batch-size", type=int, default=1000, help="entries per atomic append (default 1000)"
    )
    append.add_argument("--json", action="store_true", help="print one receipt per entry")
    append.add_argument(
        "--reader", help="encrypted ledger: reader key to encrypt with (default: its admin)"
    )
    append.add_argument(
        "--subject", help="encrypted ledger: encrypt under this subject's own (erasable) key"
    )
    add_append_args(append)

    read = sub.add_parser("read", help="print entries")
    read.add_argument("ledger")
    read.add_argument("--partition", "-p", type=int, default=0)
    read.add_argument("--from", dest="start", type=int, default=0, help="first seq (default 0)")
    read.add_argument("--to", dest="end", type=int, default=None, help="stop before this seq")
    read.add_argument("--json", action="store_true", help="one JSON object per line")
    read.add_argument(
        "--reader",
        help="decrypt with this reader key (default: the ledger's admin reader if held here)",
    )
    read.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="print a marker for entries that cannot be decrypted instead of stopping",
    )

    erase = sub.add_parser(
        "erase", help="encrypted ledger: destroy a subject's keys (crypto-shredding)"
    )
    erase.add_argument("ledger")
    erase.add_argument("--subject", required=True, help="the subject id given at append")
    erase.add_argument("--reader", help="an admin reader key (default: the ledger's admin)")

    cp = sub.add_parser("checkpoint", help="sign checkpoints of every partition and print them")
    cp.add_argument("ledger")
    cp.add_argument("--signing-key", help="key name (default: the one given at init)")

    verify = sub.add_parser("verify", help="verify a whole ledger and report tampering")
    verify.add_argument("ledger")
    _trust_args(verify)
    verify.add_argument("--partition", "-p", type=int, action="append", help="only these")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.add_argument(
        "--workers",
        type=int,
        default=None,
        help="verify partitions in N processes (default: one per CPU for large ledgers)",
    )

    prove = sub.add_parser("prove", help="produce an inclusion or consistency proof")
    prove_sub = prove.add_subparsers(dest="proof_kind", metavar="KIND")
    prove_sub.required = True
    inc = prove_sub.add_parser("inclusion", help="prove an entry is in the signed tree")
    inc.add_argument("ledger")
    inc.add_argument("--partition", "-p", type=int, required=True)
    inc.add_argument("--seq", type=int, required=True)
    inc.add_argument("--json", action="store_true")
    inc.add_argument("--output", "-o", type=Path, help="write the JSON proof to this file")
    con = prove_sub.add_parser("consistency", help="prove a newer tree extends an older one")
    con.add_argument("ledger")
    con.add_argument("--partition", "-p", type=int, required=True)
    con.add_argument("--old-size", type=int, required=True)
    con.add_argument("--new-size", type=int, default=None)
    con.add_argument("--json", action="store_true")
    con.add_argument("--output", "-o", type=Path, help="write the JSON proof to this file")

    proof = sub.add_parser("proof", help="check proofs offline")
    proof_sub = proof.add_subparsers(dest="proof_command", metavar="ACTION")
    proof_sub.required = True
    pv = proof_sub.add_parser("verify", help="verify a proof file with only the log's key")
    pv.add_argument("file", type=Path, help="proof JSON file ('-' for stdin)")
    _trust_args(pv, vkey_required=True)

    bench = sub.add_parser(
        "bench", help="benchmark against raw confluent-kafka (starts a local broker unless -b)"
    )
    bench.add_argument("--quick", action="store_true", help="small run, under a minute")
    bench.add_argument(
        "--anchor-entries",
        type=int,
        default=None,
        help="entries of the KafkaBlockchain-shaped run (full mode default 10,000,000; 0 skips)",
    )
    bench.add_argument(
        "--output", "-o", type=Path, default=Path("bench-results.json"), help="JSON results file"
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="measured rounds per throughput comparison (after discarded warm-up rounds), "
        "their median reported (default 5 in full mode, 1 with --quick)",
    )
    bench.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep the proof-latency logs (1M/10M entries, SQLite) here and reuse them once "
        "checked complete",
    )
    bench.add_argument(
        "--only",
        default=None,
        metavar="SECTIONS",
        help="run only these comma-separated sections: kafka, anchor, latency, fraud, sqlite, "
        "encryption, proofs, memory (default: all)",
    )
    bench.add_argument(
        "--sizes",
        default=None,
        metavar="BYTES",
        help="payload sizes of the kafka section, comma-separated (default: 100,1024,10240)",
    )

    seq = sub.add_parser("sequencer", help="Kafka: the sequencer service (intake topic -> ledger)")
    seq_sub = seq.add_subparsers(dest="sequencer_command", metavar="ACTION")
    seq_sub.required = True
    run = seq_sub.add_parser(
        "run", help="sequence submissions of an intake topic into a ledger, exactly once"
    )
    run.add_argument("--intake", required=True, help="topic plain producers write to")
    run.add_argument("--ledger", required=True, help="the ledger to append to")
    run.add_argument("--group", help="consumer group (default streamledger-sequencer-LEDGER)")
    run.add_argument(
        "--instance-id", help="stable name of this process (fast takeover after a crash)"
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=10_000, help="entries between checkpoints"
    )
    run.add_argument(
        "--checkpoint-interval", type=float, default=60.0, help="seconds between checkpoints"
    )
    run.add_argument("--signing-key", help="key name (default: the one given at init)")
    run.add_argument("--rejects", help="topic for invalid submissions (default LEDGER.rejects)")
    run.add_argument(
        "--max-payload-bytes", type=int, default=900_000, help="larger payloads are rejected"
    )
    run.add_argument("--allow-empty", action="store_true", help="accept empty payloads")
    run.add_argument("--batch-size", type=int, default=5000, help="submissions per transaction")
    run.add_argument(
        "--stats-interval", type=float, default=5.0, help="seconds between progress lines"
    )

    from streamledger.cli import witness_audit

    witness_audit.add_parsers(sub, _trust_args)

    add_consortium_commands(sub)

    from streamledger.fraud.cli import add_commands as add_fraud_commands

    add_fraud_commands(sub)

    demo = sub.add_parser("demo", help="a guided tour: append, checkpoint, verify, tamper, prove")
    demo.add_argument("--entries", type=int, default=20_000, help="payments to stream")
    demo.add_argument("--kafka", action="store_true", help="run on Kafka instead of SQLite")
    return parser


def _key_admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--as",
        dest="admin",
        help="reader key that holds the data keys (default: the ledger's admin reader)",
    )
    parser.add_argument(
        "--signing-key", help="signs the key documents (default: the one given at init)"
    )


def _trust_args(parser: argparse.ArgumentParser, vkey_required: bool = False) -> None:
    parser.add_argument(
        "--vkey",
        action="append",
        default=[],
        required=vkey_required,
        help="trusted log verifier key (name+hash+base64, or a file holding it); repeatable",
    )
    parser.add_argument(
        "--witness-vkey",
        action="append",
        default=[],
        help="trusted witness cosigning key; repeatable",
    )
    parser.add_argument(
        "--require-witnesses",
        type=int,
        default=0,
        metavar="K",
        help="accept checkpoints only with K valid witness cosignatures",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from streamledger.cli import commands

    try:
        return commands.run(args)
    except VerificationError as exc:
        print(f"streamledger: REJECTED: {exc}", file=sys.stderr)
        return EXIT_TAMPERED
    except StreamledgerError as exc:
        print(f"streamledger: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("streamledger: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        print(f"streamledger: error:{name} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        # A bug of ours. Exit 2, never 1: a crash must not read as "tampering found".
        if os.environ.get("STREAMLEDGER_DEBUG"):
            raise
        print(
            f"streamledger: internal error: {type(exc).__name__}: {exc} "
            "(set STREAMLEDGER_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
