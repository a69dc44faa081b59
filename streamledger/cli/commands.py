"""Command handlers of the ``streamledger`` CLI."""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from streamledger.backends.base import Backend
from streamledger.cli.main import DEFAULT_DATA_DIR, EXIT_ERROR, EXIT_OK, EXIT_TAMPERED, UsageError
from streamledger.core.note import KEY_TYPE_COSIGNATURE, VerifierKey
from streamledger.core.proof import load_proof
from streamledger.core.verify import TrustPolicy
from streamledger.errors import (
    ConfigError,
    FormatError,
    ProofError,
    StreamledgerError,
    VerificationError,
)
from streamledger.keys import KeyStore, load_vkey
from streamledger.ledger import AppendItem, Ledger, LedgerReport


# -- context -----------------------------------------------------------------------------
def data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    return Path(os.environ.get("STREAMLEDGER_DATA_DIR") or DEFAULT_DATA_DIR)


def key_store(args: argparse.Namespace) -> KeyStore:
    if args.keys_dir is not None:
        return KeyStore(args.keys_dir)
    env = os.environ.get("STREAMLEDGER_KEYS_DIR")
    return KeyStore(Path(env) if env else data_dir(args) / "keys")


def kafka_bootstrap(args: argparse.Namespace) -> str | None:
    return args.bootstrap_servers or os.environ.get("STREAMLEDGER_KAFKA") or None


def backend_opener(args: argparse.Namespace, *, create: bool = False) -> Callable[[], Backend]:
    """A picklable function that opens the backend the options name (also used by parallel
    verification workers, which open their own connections)."""
    bootstrap = kafka_bootstrap(args)
    if bootstrap:
        from streamledger.backends.kafka import KafkaBackend

        return functools.partial(
            KafkaBackend,
            bootstrap,
            config=dict(args.kafka_config),
            state_dir=data_dir(args) / "kafka-cache",
        )
    from streamledger.backends.sqlite import SQLiteBackend

    directory = data_dir(args)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"data directory {directory} is not a directory (check --data-dir)")
    return functools.partial(SQLiteBackend, directory, create=create)


def open_backend(args: argparse.Namespace, *, create: bool = False) -> Backend:
    return backend_opener(args, create=create)()


def open_ledger(args: argparse.Namespace, backend: Backend, *, signing_key: str | None = None):
    ledger = Ledger(backend, args.ledger)
    name = signing_key or ledger.config.signing_key
    if signing_key:
        ledger.signer = key_store(args).load(signing_key)
    elif name and key_store(args).exists(name):
        ledger.signer = key_store(args).load(name)
    return ledger


def trust_policy(args: argparse.Namespace, ledger: Ledger | None = None) -> TrustPolicy | None:
    log_keys = tuple(load_vkey(v) for v in args.vkey)
    witness_keys = tuple(load_vkey(v) for v in args.witness_vkey)
    for key in witness_keys:
        if key.key_type != KEY_TYPE_COSIGNATURE:
            raise ConfigError(f"--witness-vkey {key.name!r} is not a witness cosigning key")
    if args.require_witnesses < 0 or args.require_witnesses > len(witness_keys):
        raise UsageError(
            f"--require-witnesses {args.require_witnesses} needs at least that many "
            f"--witness-vkey keys (got {len(witness_keys)})"
        )
    if not log_keys:
        if ledger is None or ledger.config.log_vkey is None:
            return None
        log_keys = (VerifierKey.parse(ledger.config.log_vkey),)
        return TrustPolicy(log_keys, witness_keys, args.require_witnesses)
    # Keys named by the user: an audit. A log those keys never signed does not pass.
    return TrustPolicy(log_keys, witness_keys, args.require_witnesses, require_checkpoint=True)


def _emit_json(obj: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# -- commands ----------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    store = key_store(args)
    if args.keys_command in ("grant", "revoke", "rotate", "epochs"):
        return cmd_key_admin(args)
    if args.keys_command == "generate" and args.reader:
        if args.witness:
            raise UsageError("a key is either --witness or --reader, not both")
        public = store.generate_reader(args.name)
        print(f"created reader key {args.name!r} (X25519)", file=sys.stderr)
        print(
            f"  private key: {store.reader_path(args.name)} (mode 0600, keep it secret)",
            file=sys.stderr,
        )
        print("  public key (give this to whoever grants you access):", file=sys.stderr)
        print(public)
        return EXIT_OK
    if args.keys_command == "show" and (
        args.reader or (not store.exists(args.name) and store.reader_exists(args.name))
    ):
        public = store.reader_public(args.name)
        if args.reader:
            print(public)
        else:
            print(f"name:         {public.name}")
            print("type:         X25519 reader key (payload encryption)")
            print(f"fingerprint:  {public.fingerprint}")
            print(f"private file: {store.reader_path(args.name)}")
            print(f"public key:   {public}")
        return EXIT_OK
    if args.keys_command == "generate":
        vkey = store.generate(args.name, witness=args.witness)
        print(f"created {'witness ' if args.witness else ''}key {args.name!r}", file=sys.stderr)
        print(
            f"  private key: {store.key_path(args.name)} (mode 0600, keep it secret)",
            file=sys.stderr,
        )
        print("  verifier key (give this to auditors):", file=sys.stderr)
        print(vkey)
        return EXIT_OK
    if args.keys_command == "show":
        vkey = store.vkey(args.name)
        if args.vkey:
            print(vkey)
        else:
            kind = "witness cosigning" if vkey.key_type == KEY_TYPE_COSIGNATURE else "log signing"
            print(f"name:         {vkey.name}")
            print(f"type:         Ed25519 {kind} key")
            print(f"key hash:     {vkey.key_hash.hex()}")
            print(f"private file: {store.key_path(args.name)}")
            print(f"verifier key: {vkey}")
        return EXIT_OK
    names = sorted(p.name[: -len(".key")] for p in store.directory.glob("*.key"))
    from urllib.parse import unquote

    for name in names:
        print(unquote(name))
    if store.directory.is_dir():
        for name in store.reader_names():
            print(f"{name}\t(reader)")
    return EXIT_OK


# -- encryption --------------------------------------------------------------------------
def _reader_public_arg(store: KeyStore, text: str):
    """A reader public key given as text, as a file holding it, or as a local reader name."""
    from streamledger.crypto import ReaderPublicKey

    if text.startswith("X25519+") or text.startswith("PRIVATE+"):
        try:
            return ReaderPublicKey.parse(text)
        except FormatError as exc:
            raise ConfigError(f"invalid reader public key: {exc}") from None
    candidate = Path(text)
    if candidate.is_file():
        try:
            return ReaderPublicKey.parse(candidate.read_text())
        except (OSError, UnicodeDecodeError, FormatError) as exc:
            raise ConfigError(f"{text}: not a reader public key file ({exc})") from None
    return store.reader_public(text)


def _keyring(backend: Backend, ledger: str, *, required: bool = True):
    from streamledger.crypto import Keyring

    keyring = Keyring(backend, ledger)
    if required and not keyring.is_encrypted():
        raise ConfigError(
            f"ledger {ledger!r} is not encrypted: create encrypted ledgers with "
            "'init LEDGER --encrypt --reader NAME'"
        )
    return keyring


def _encryption(args: argparse.Namespace, backend: Backend, keyring: Any, reader: str | None):
    """LedgerEncryption with reader ``reader`` (default: the ledger's admin reader)."""
    from streamledger.crypto import LedgerEncryption, subject_store_for

    name = reader or keyring.current().admin
    store = key_store(args)
    if reader is None and not store.reader_exists(name):
        raise ConfigError(
            f"ledger {keyring.ledger!r} is encrypted and its admin reader key {name!r} is not "
            f"in {store.directory}: pass --reader NAME of a reader key held here"
        )
    key = store.load_reader(name)
    subjects = subject_store_for(backend, dict(args.kafka_config))
    return LedgerEncryption(backend, keyring.ledger, key, subjects=subjects)


def cmd_key_admin(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        keyring = _keyring(backend, args.ledger)
        if args.keys_command == "epochs":
            for epoch, manifest in keyring.manifests().items():
                readers = ", ".join(sorted(manifest.readers))
                print(
                    f"epoch {epoch}\t{manifest.reason or '-'}\tadmin {manifest.admin}\t"
                    f"readers: {readers}" + ("" if manifest.signed else "\t(unsigned)")
                )
            return EXIT_OK
        signer = open_ledger(args, backend, signing_key=args.signing_key).signer
        if args.keys_command == "rotate":
            epoch = keyring.rotate(signer=signer)
            print(f"ledger {args.ledger}: epoch {epoch} started; new entries use its key")
        elif args.keys_command == "revoke":
            epoch = keyring.revoke(args.reader, signer=signer)
            print(
                f"ledger {args.ledger}: reader {args.reader!r} revoked; epoch {epoch} started "
                f"without it (it can still read entries of epochs before {epoch})"
            )
        else:
            store = key_store(args)
            public = _reader_public_arg(store, args.reader_pub or args.reader)
            if public.name != args.reader:
                raise ConfigError(
                    f"the public key given is reader {public.name!r}, not {args.reader!r}"
                )
            admin = store.load_reader(args.admin or keyring.current().admin)
            epochs = keyring.grant(admin, public, signer=signer, history=not args.current_only)
            print(
                f"ledger {args.ledger}: reader {args.reader!r} granted epoch(s) "
                + ", ".join(str(e) for e in epochs)
            )
    finally:
        backend.close()
    return EXIT_OK


def cmd_erase(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        keyring = _keyring(backend, args.ledger)
        encryption = _encryption(args, backend, keyring, args.reader)
        record = encryption.erase(args.subject)
    finally:
        backend.close()
    deleted = record["keys_deleted"]
    if deleted:
        print(
            f"ledger {args.ledger}: subject erased, {deleted} key(s) destroyed; its payloads "
            "can no longer be decrypted, and the ledger still verifies"
        )
    else:
        print(
            f"ledger {args.ledger}: no keys of this subject found (never written, or already "
            "erased); erasure recorded"
        )
    if record["epochs_not_held"]:
        print(
            "warning: this reader holds no key for epoch(s) "
            + ", ".join(str(e) for e in record["epochs_not_held"])
            + ": erase again with a reader of those epochs",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    signer = key_store(args).load(args.signing_key) if args.signing_key else None
    readers = [_reader_public_arg(key_store(args), r) for r in args.reader]
    if args.encrypt and not readers:
        raise UsageError(
            "--encrypt needs --reader NAME (create one with 'keys generate NAME --reader')"
        )
    if readers and not args.encrypt:
        raise UsageError("--reader only applies with --encrypt")
    options = {}
    if args.replication_factor is not None:
        options["replication.factor"] = str(args.replication_factor)
    if args.min_insync_replicas is not None:
        options["min.insync.replicas"] = str(args.min_insync_replicas)
    backend = open_backend(args, create=True)
    try:
        from streamledger.consortium.cli import init_options

        options.update(init_options(args, backend))
        ledger = Ledger.create(
            backend,
            args.ledger,
            partitions=args.partitions,
            origin=args.origin,
            signer=signer,
            options=options,
        )
        if readers:
            _keyring(backend, ledger.name, required=False).enable(readers, signer=signer)
        where = kafka_bootstrap(args) or str(data_dir(args))
        print(f"created ledger {ledger.name!r} with {ledger.partitions} partition(s) in {where}")
        if readers:
            print(
                "payloads encrypted (AES-256-GCM), epoch 1 readers: "
                + ", ".join(r.name for r in readers)
                + f" (writer: {readers[0].name})"
            )
        if args.signed_submissions:
            print(f"signed submissions only: writers of membership ledger {args.membership}")
        if signer:
            print(f"checkpoints signed by {signer.name}; verifier key:\n{signer.verifier}")
        else:
            print("no signing key: pass --signing-key NAME to 'checkpoint' to sign checkpoints")
    finally:
        backend.close()
    return EXIT_OK


def cmd_ledgers(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        for name in backend.list_ledgers():
            config = backend.ledger_config(name)
            print(f"{name}\t{config.partitions} partition(s)\tkey {config.signing_key or '-'}")
    finally:
        backend.close()
    return EXIT_OK


def _input_lines(args: argparse.Namespace) -> Iterator[bytes]:
    if args.file is not None:
        try:
            handle = open(args.file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        handle = sys.stdin.buffer
    try:
        for raw in handle:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                yield line
    finally:
        if args.file is not None:
            handle.close()


def cmd_append(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    key = args.key.encode("utf-8") if args.key is not None else None
    backend = open_backend(args)
    total = 0
    per_partition: dict[int, int] = {}
    try:
        ledger = open_ledger(args, backend)
        keyring = _keyring(backend, args.ledger, required=False)
        if keyring.is_encrypted():
            ledger.encryption = _encryption(args, backend, keyring, args.reader)
        elif args.reader or args.subject is not None:
            raise UsageError(
                f"ledger {args.ledger!r} is not encrypted: --reader and --subject need "
                "'init --encrypt'"
            )
        from streamledger.consortium.cli import signed_appender

        signed = signed_appender(args, ledger)
        batch: list[AppendItem] = []

        def flush() -> None:
            nonlocal total
            if not batch:
                return
            if signed is not None:
                receipts = signed(batch, args.partition)
            else:
                receipts = ledger.append_many(batch, partition=args.partition)
            total += len(receipts)
            for receipt in receipts:
                per_partition[receipt.partition] = per_partition.get(receipt.partition, 0) + 1
                if args.json:
                    _emit_receipt(receipt)
            batch.clear()

        for line in _input_lines(args):
            batch.append(AppendItem(line, key, args.content_type, args.subject))
            if len(batch) >= args.batch_size:
                flush()
        flush()
    finally:
        backend.close()
    if not args.json:
        parts = ", ".join(f"partition {p}: {n}" for p, n in sorted(per_partition.items()))
        print(
            f"appended {total} entr{'y' if total == 1 else 'ies'} to {args.ledger}"
            + (f" ({parts})" if parts else ""),
            file=sys.stderr,
        )
    return EXIT_OK


def _emit_receipt(receipt: Any) -> None:
    print(
        json.dumps(
            {
                "ledger": receipt.ledger,
                "partition": receipt.partition,
                "seq": receipt.seq,
                "offset": receipt.offset,
                "leaf_hash": receipt.leaf_hash.hex(),
            }
        )
    )


def _read_entries(ledger: Ledger, partition: int, start: int, end: int | None) -> Iterator[Any]:
    """``ledger.read``, but a damaged stored record becomes an error naming where it is."""
    entries = ledger.read(partition, start, end)
    position = start
    while True:
        try:
            entry = next(entries)
        except StopIteration:
            return
        except FormatError as exc:
            raise FormatError(
                f"ledger {ledger.name!r} partition {partition}: the record stored at position "
                f"{position} is not a valid entry ({exc}); run 'streamledger verify "
                f"{ledger.name}' for a full report"
            ) from None
        yield entry
        position += 1


def cmd_read(args: argparse.Namespace) -> int:
    if args.start < 0 or (args.end is not None and args.end < 0):
        raise UsageError("--from and --to must not be negative")
    backend = open_backend(args)
    try:
        ledger = Ledger(backend, args.ledger)
        keyring = _keyring(backend, args.ledger, required=False)
        encryption = None
        if keyring.is_encrypted():
            admin = keyring.current().admin
            if args.reader or key_store(args).reader_exists(admin):
                encryption = _encryption(args, backend, keyring, args.reader)
        elif args.reader:
            raise UsageError(f"ledger {args.ledger!r} is not encrypted: --reader does not apply")
        from streamledger.crypto import DecryptionError
        from streamledger.crypto.envelope import is_encrypted_type, original_type

        for entry in _read_entries(ledger, args.partition, args.start, args.end):
            header = entry.header
            payload = entry.payload
            content_type = header.content_type
            unreadable = None
            if is_encrypted_type(content_type):
                if encryption is None:
                    unreadable = "encrypted; pass --reader NAME"
                else:
                    try:
                        plain = encryption.decrypt(entry)
                        payload, content_type = plain.payload, plain.content_type
                    except DecryptionError as exc:
                        if not args.skip_unreadable:
                            raise
                        print(f"streamledger: warning: {exc}", file=sys.stderr)
                        unreadable = "cannot be decrypted"
                if unreadable is not None:
                    content_type = original_type(content_type)
                    payload = None
            if args.json:
                obj: dict[str, Any] = {
                    "ledger": header.ledger,
                    "partition": header.partition,
                    "seq": header.seq,
                    "timestamp_ms": header.timestamp_ms,
                    "producer": header.producer,
                    "content_type": content_type,
                    "key": header.key.decode("utf-8", "replace") if header.key else None,
                    "prev_hash": header.prev_hash.hex(),
                    "payload_hash": header.payload_hash.hex(),
                    "leaf_hash": entry.leaf_hash.hex(),
                }
                if is_encrypted_type(header.content_type):
                    obj["encrypted"] = True
                if unreadable is not None:
                    obj["unreadable"] = unreadable
                if payload is None:
                    obj["payload"] = None
                else:
                    try:
                        obj["payload"] = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        obj["payload_base64"] = base64.b64encode(payload).decode()
                print(json.dumps(obj))
            else:
                text = (
                    f"<{unreadable}>"
                    if unreadable is not None
                    else "<payload absent>"
                    if payload is None
                    else payload.decode("utf-8", "backslashreplace")
                )
                print(f"{header.partition}:{header.seq}\t{text}")
    finally:
        backend.close()
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        ledger = open_ledger(args, backend, signing_key=args.signing_key)
        if ledger.signer is None:
            name = ledger.config.signing_key
            raise ConfigError(
                f"no signing key for ledger {args.ledger!r}: "
                + (
                    f"key {name!r} is not in {key_store(args).directory}"
                    if name
                    else "pass --signing-key NAME"
                )
            )
        for note in ledger.checkpoint():
            sys.stdout.write(note)
            sys.stdout.write("\n")
    finally:
        backend.close()
    return EXIT_OK


def _progress(total: int):
    """A rich progress bar on a terminal, or nothing."""
    if not sys.stderr.isatty() or total < 20_000:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=__import__("rich.console").console.Console(stderr=True),
    )
    task = progress.add_task("verifying", total=total)
    done: dict[int, int] = {}

    def update(partition: int, count: int) -> None:
        done[partition] = count
        progress.update(task, completed=sum(done.values()))

    return progress, update


def print_report(report: LedgerReport, out: TextIO = sys.stdout) -> None:
    out.write(
        f"ledger {report.ledger}: {len(report.partitions)} partition(s), "
        f"{report.entries_checked} entries checked\n"
    )
    for part in report.partitions:
        status = "ok" if part.ok else f"TAMPERED ({len(part.findings)} finding(s))"
        cps = part.checkpoints_verified
        out.write(
            f"  partition {part.partition}: {status}; {part.entries_checked} entries, "
            f"{cps} checkpoint(s) verified"
            + (
                f" (latest covers {part.latest_checkpoint_size})"
                if part.latest_checkpoint_size is not None
                else ""
            )
            + "\n"
        )
        for finding in part.findings:
            out.write(f"    {finding}\n")
        for warning in part.warnings:
            out.write(f"    note: {warning}\n")
    findings = len(report.findings)
    out.write(
        "result: OK, no tampering found\n"
        if report.ok
        else f"result: TAMPERING FOUND ({findings} finding(s))\n"
    )


def cmd_verify(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        ledger = Ledger(backend, args.ledger)
        trust = trust_policy(args, ledger)
        if not args.json:
            if not args.vkey and trust is not None:
                print(
                    "note: trusting the verifier key recorded at init; pass --vkey for an "
                    "independent audit",
                    file=sys.stderr,
                )
            elif trust is None:
                print(
                    "note: no verifier key: checking hash chains only, not signatures",
                    file=sys.stderr,
                )
        parts = args.partition
        total = sum(ledger.size(p) for p in (parts or range(ledger.partitions)))
        workers = args.workers
        if workers is None:  # parallel only where it pays for the worker start-up
            workers = min(os.cpu_count() or 1, ledger.partitions) if total > 300_000 else 1
        opener = backend_opener(args) if workers > 1 else None
        progress, update = _progress(total)
        if progress is not None:
            with progress:
                report = ledger.verify(
                    trust, partitions=parts, progress=update, workers=workers, opener=opener
                )
        else:
            report = ledger.verify(trust, partitions=parts, workers=workers, opener=opener)
    finally:
        backend.close()
    if args.json:
        _emit_json(report.to_json())
    else:
        print_report(report)
    return EXIT_OK if report.ok else EXIT_TAMPERED


def _write_proof(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if args.output is not None:
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"proof written to {args.output}", file=sys.stderr)
    if args.json:
        sys.stdout.write(text)
    elif args.output is None:
        print(human)


def cmd_prove(args: argparse.Namespace) -> int:
    backend = open_backend(args)
    try:
        ledger = Ledger(backend, args.ledger)
        if args.proof_kind == "inclusion":
            size = ledger.size(args.partition)
            if not 0 <= args.seq < size:
                raise ProofError(
                    f"{args.ledger!r} partition {args.partition} has no entry seq {args.seq} "
                    f"(it holds seqs 0..{size - 1})"
                    if size
                    else f"{args.ledger!r} partition {args.partition} is empty"
                )
            try:
                proof = ledger.prove_inclusion(args.partition, args.seq)
            except FormatError as exc:
                raise FormatError(
                    f"cannot prove entry seq {args.seq} of {args.ledger!r} partition "
                    f"{args.partition}: the stored record is not a valid entry ({exc}); run "
                    f"'streamledger verify {args.ledger}'"
                ) from None
            human = (
                f"entry {proof.index} of {proof.ledger}/{proof.partition} is in the tree of "
                f"{proof.tree_size} entries\nleaf hash {proof.leaf_hash.hex()}\nroot      "
                f"{proof.root_hash.hex()}\npath:\n"
                + "".join(f"  {h.hex()}\n" for h in proof.proof)
                + "signed checkpoint:\n"
                + proof.checkpoint
            )
        else:
            proof = ledger.prove_consistency(args.partition, args.old_size, args.new_size)
            human = (
                f"the tree of {proof.new_size} entries of {proof.ledger}/{proof.partition} "
                f"extends the tree of {proof.old_size}\nold root {proof.old_root.hex()}\n"
                f"new root {proof.new_root.hex()}\npath:\n"
                + "".join(f"  {h.hex()}\n" for h in proof.proof)
            )
        _write_proof(args, proof.to_json(), human)
    finally:
        backend.close()
    return EXIT_OK


def cmd_proof_verify(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read proof file {args.file}: {exc}") from None
    proof = load_proof(text)
    trust = trust_policy(args)
    assert trust is not None
    try:
        facts = proof.verify(list(trust.log_keys), trust.witness_keys, trust.required_witnesses)
    except FormatError as exc:
        # The file parsed, but a part it vouches with (checkpoint, entry) is malformed.
        raise VerificationError(f"proof file {args.file}: {exc}") from None
    for fact in facts:
        print(f"  ✓ {fact}")
    print("proof OK")
    return EXIT_OK


def cmd_sequencer(args: argparse.Namespace) -> int:
    from streamledger.services.sequencer import Limits, Sequencer

    bootstrap = kafka_bootstrap(args)
    if not bootstrap:
        raise UsageError("the sequencer needs Kafka: pass -b HOST:PORT or set STREAMLEDGER_KAFKA")
    signer = None
    if args.checkpoint_every or args.checkpoint_interval:
        backend = open_backend(args)
        try:
            signer = open_ledger(args, backend, signing_key=args.signing_key).signer
        finally:
            backend.close()
        if signer is None:
            raise ConfigError(
                f"no signing key for ledger {args.ledger!r}: pass --signing-key NAME, or "
                "--checkpoint-every 0 --checkpoint-interval 0 to run without checkpoints"
            )
    sequencer = Sequencer(
        bootstrap,
        args.ledger,
        args.intake,
        group_id=args.group,
        rejects=args.rejects,
        signer=signer,
        checkpoint_every=args.checkpoint_every,
        checkpoint_interval=args.checkpoint_interval,
        instance_id=args.instance_id,
        config=dict(args.kafka_config),
        state_dir=data_dir(args) / "kafka-cache",
        limits=Limits(max_payload_bytes=args.max_payload_bytes, allow_empty=args.allow_empty),
        batch_size=args.batch_size,
        stats_interval=args.stats_interval,
        out=sys.stderr,
    )
    sequencer.run(handle_signals=True)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    command = args.command
    if command in ("witness", "audit"):
        from streamledger.cli import witness_audit

        return witness_audit.run(args)
    if command == "sequencer":
        return cmd_sequencer(args)
    if command == "keys":
        return cmd_keys(args)
    if command == "init":
        return cmd_init(args)
    if command == "ledgers":
        return cmd_ledgers(args)
    if command == "append":
        return cmd_append(args)
    if command == "read":
        return cmd_read(args)
    if command == "erase":
        return cmd_erase(args)
    if command == "checkpoint":
        return cmd_checkpoint(args)
    if command == "verify":
        return cmd_verify(args)
    if command == "prove":
        return cmd_prove(args)
    if command == "proof":
        return cmd_proof_verify(args)
    if command == "bench":
        from streamledger.bench import format_table, run_bench

        results = run_bench(
            args.quick,
            kafka_bootstrap(args),
            dict(args.kafka_config),
            args.output,
            anchor=args.anchor_entries,
            repeat=args.repeat,
            cache_dir=args.cache_dir,
            only=args.only,
            sizes=args.sizes,
        )
        print(format_table(results))
        print(f"results written to {args.output}", file=sys.stderr)
        return EXIT_OK
    if command in ("org", "membership"):
        from streamledger.consortium.cli import run as run_consortium

        return run_consortium(args)
    if command == "fraud":
        from streamledger.fraud.cli import run as run_fraud

        return run_fraud(args)
    if command == "demo":
        from streamledger.cli.demo import run_demo

        return run_demo(args)
    raise StreamledgerError(f"unknown command {command!r}")


__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_TAMPERED", "run"]
