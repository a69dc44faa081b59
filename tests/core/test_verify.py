"""The streaming verifier: honest logs never fail; each act of tampering gives exactly one
finding, of the right kind, at the right seq, partition and offset."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamledger.backends.memory import MemoryBackend
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint
from streamledger.core.entry import StoredRecord, decode_record
from streamledger.core.note import SigningKey
from streamledger.core.verify import TrustPolicy, verify_partition
from streamledger.ledger import Ledger
from streamledger.testing import fixed_clock, memory_ledger, records_of, tamper

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def findings(ledger: Ledger, trust: TrustPolicy | None = None) -> list[tuple]:
    report = ledger.verify(trust)
    return [(f.kind, f.partition, f.seq, f.offset) for f in report.findings]


def findings_no_trust(ledger: Ledger) -> list[tuple]:
    """Chain and tree only: no checkpoint signatures checked, no store hints."""
    out = []
    for p in range(ledger.partitions):
        report = verify_partition(
            ledger.name,
            p,
            ledger.config.checkpoint_origin(p),
            ledger.backend.scan(ledger.name, p),
            ledger.backend.checkpoints(ledger.name, p),
            None,
        )
        out += [(f.kind, f.partition, f.seq, f.offset) for f in report.findings]
    return out


# -- honest logs ---------------------------------------------------------------------------


@SETTINGS
@given(
    partitions=st.integers(1, 3),
    data=st.data(),
)
def test_honest_random_ledgers_verify(partitions: int, data: st.DataObject) -> None:
    ledger, key = memory_ledger("honest", partitions)
    for p in range(partitions):
        size = data.draw(st.integers(0, 60), label=f"size{p}")
        cadence = data.draw(st.integers(1, 20), label=f"cadence{p}")
        written = 0
        while written < size:
            batch = min(cadence, size - written)
            payloads = data.draw(st.lists(st.binary(max_size=40), min_size=batch, max_size=batch))
            ledger.append_many(payloads, partition=p)
            written += batch
            if data.draw(st.booleans()):
                ledger.checkpoint()
    if data.draw(st.booleans()):
        ledger.checkpoint()
    report = ledger.verify()
    assert report.ok, report.findings
    assert report.entries_checked == sum(ledger.size(p) for p in range(partitions))
    assert findings_no_trust(ledger) == []
    assert findings(ledger, TrustPolicy((key.verifier,))) == []


def test_empty_ledger_verifies() -> None:
    ledger, _ = memory_ledger("empty", 2, checkpoint=True)
    assert ledger.verify().ok


def test_keyed_and_unkeyed_entries_verify() -> None:
    ledger, _ = memory_ledger("mixed", 3)
    for i in range(30):
        ledger.append(b"x" * i, key=f"customer-{i % 7}".encode() if i % 2 else None)
    ledger.checkpoint()
    ledger.append(b"after the checkpoint")
    report = ledger.verify()
    assert report.ok
    assert any("hash chain only" in w for p in report.partitions for w in p.warnings)


# -- one finding per act of tampering --------------------------------------------------------


def _tampered_setup(data: st.DataObject, min_size: int = 3):
    """A ledger of 1-3 partitions with n >= min_size entries in the target partition,
    checkpointed at random points and at the end."""
    partitions = data.draw(st.integers(1, 3), label="partitions")
    p = data.draw(st.integers(0, partitions - 1), label="partition")
    n = data.draw(st.integers(min_size, 30), label="size")
    ledger, key = memory_ledger("tl", partitions)
    cadence = data.draw(st.integers(1, n), label="cadence")
    for q in range(partitions):
        written = 0
        while written < n:
            batch = min(cadence, n - written)
            ledger.append_many([f"{q}/{written + j}".encode() for j in range(batch)], partition=q)
            written += batch
            ledger.checkpoint()
    return ledger, key, p, n


def _check_one(ledger: Ledger, expected: tuple) -> None:
    got = findings(ledger)
    assert got == [expected], got


@SETTINGS
@given(st.data())
def test_payload_modified(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 1), label="i")
    tamper.edit_payload(records_of(ledger, p), i)
    _check_one(ledger, ("payload_modified", p, i, i))
    assert findings_no_trust(ledger) == [("payload_modified", p, i, i)]


@SETTINGS
@given(st.data())
def test_header_modified(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 1), label="i")  # last entry too: a checkpoint covers it
    tamper.edit_header(records_of(ledger, p), i)
    _check_one(ledger, ("header_modified", p, i, i))
    if i < n - 1:  # the chain alone catches all but the newest entry
        assert findings_no_trust(ledger) == [("header_modified", p, i, i)]


@pytest.mark.parametrize("i", [0, 1, 4])
def test_header_modified_first_and_last_covered_by_checkpoint(i: int) -> None:
    ledger, _ = memory_ledger("hm", 1, 5, checkpoint=True)
    tamper.edit_header(records_of(ledger), i)
    assert findings(ledger) == [("header_modified", 0, i, i)]


@SETTINGS
@given(st.data())
def test_missing(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 2), label="i")
    tamper.delete(records_of(ledger, p), i)
    _check_one(ledger, ("missing", p, i, i))


def test_several_consecutive_deleted_is_one_finding() -> None:
    ledger, _ = memory_ledger("gap", 1, 10, checkpoint=True)
    del records_of(ledger)[3:6]
    report = ledger.verify()
    assert [(f.kind, f.seq) for f in report.findings] == [("missing", 3)]
    assert "seq 3..5" in report.findings[0].detail


@SETTINGS
@given(st.data())
def test_duplicate(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 1), label="i")
    tamper.duplicate(records_of(ledger, p), i)
    _check_one(ledger, ("duplicate", p, i, i + 1))


def test_duplicate_replayed_later() -> None:
    ledger, _ = memory_ledger("replay", 1, 8, checkpoint=True)
    recs = records_of(ledger)
    recs.insert(6, recs[2])
    assert findings(ledger) == [("duplicate", 0, 2, 6)]


@SETTINGS
@given(st.data())
def test_reordered(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 2), label="i")
    tamper.swap(records_of(ledger, p), i)
    _check_one(ledger, ("reordered", p, i, i))


@SETTINGS
@given(st.data())
def test_inserted_clever_forger(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 1), label="i")
    tamper.insert_forged(records_of(ledger, p), i)
    _check_one(ledger, ("inserted", p, i, i))


@SETTINGS
@given(st.data())
def test_inserted_arbitrary_seq(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n), label="i")
    seq = data.draw(st.integers(0, 2**40), label="seq")
    assume(seq != i)  # a well-chained entry claiming seq n appended at the tail is undetectable
    tamper.insert_forged(records_of(ledger, p), i, seq=seq)
    _check_one(ledger, ("inserted", p, i, i))


@SETTINGS
@given(st.data())
def test_foreign_from_another_ledger(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    other, _ = memory_ledger("other-ledger", 1, n)
    i = data.draw(st.integers(0, n), label="i")
    replace = data.draw(st.booleans(), label="replace") and i < n
    tamper.copy_foreign(records_of(ledger, p), i, records_of(other)[min(i, n - 1)], replace=replace)
    _check_one(ledger, ("foreign", p, i, i))


@SETTINGS
@given(st.data())
def test_foreign_from_another_partition(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    assume(ledger.partitions > 1)
    q = (p + 1) % ledger.partitions
    i = data.draw(st.integers(0, n), label="i")
    j = data.draw(st.integers(0, n - 1), label="j")
    replace = data.draw(st.booleans(), label="replace") and i < n
    foreign = records_of(ledger, q)[j]
    tamper.copy_foreign(records_of(ledger, p), i, foreign, replace=replace)
    _check_one(ledger, ("foreign", p, i, i))


def test_foreign_same_seq_from_another_partition() -> None:
    """Partition 1's entry 2 put in place of partition 0's entry 2: same seq, wrong log."""
    ledger, _ = memory_ledger("xp", 2, 5, checkpoint=True)
    tamper.copy_foreign(records_of(ledger, 0), 2, records_of(ledger, 1)[2], replace=True)
    assert findings(ledger) == [("foreign", 0, 2, 2)]


@SETTINGS
@given(st.data())
def test_truncated(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    k = data.draw(st.integers(0, n - 1), label="keep")
    tamper.truncate(records_of(ledger, p), k)
    _check_one(ledger, ("truncated", p, k, None))


@SETTINGS
@given(st.data())
def test_malformed(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n), label="i")
    garbage = data.draw(st.binary(min_size=0, max_size=80), label="garbage")
    assume(not garbage.startswith(b"SLDG"))
    if data.draw(st.booleans(), label="replace") and i < n:
        records_of(ledger, p)[i] = garbage
    else:
        tamper.insert_garbage(records_of(ledger, p), i, garbage)
    _check_one(ledger, ("malformed", p, i, i))


@SETTINGS
@given(st.data())
def test_unknown_version(data: st.DataObject) -> None:
    ledger, _, p, n = _tampered_setup(data)
    i = data.draw(st.integers(0, n - 1), label="i")
    tamper.set_version(records_of(ledger, p), i, data.draw(st.sampled_from([0, 2, 9, 255])))
    _check_one(ledger, ("unknown_version", p, i, i))


# -- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 3])
def test_rewritten_history_checkpoint_mismatch(start: int) -> None:
    """The partition rewritten (from ``start`` on) with a fresh, self-consistent chain; the
    original signed checkpoints are kept. Only the signatures can catch this."""
    ledger, _ = memory_ledger("rw", 2)
    for _ in range(3):
        ledger.append_many([b"original"] * 4, partition=1)
        ledger.checkpoint()  # sizes 4, 8, 12
    recs = records_of(ledger, 1)
    if start == 0:  # a fresh Ledger with the same name builds the whole new history
        fake = Ledger.create(MemoryBackend(), "rw", partitions=2, clock=fixed_clock())
        fake.append_many([b"rewritten"] * 12, partition=1)
        recs[:] = records_of(fake, 1)
    else:
        del recs[start:]
        for seq in range(start, 12):
            recs.append(tamper.forge(recs[-1], seq, decode_record(recs[-1]).leaf_hash, b"evil"))
    assert findings_no_trust(ledger) == []  # the chain alone is self-consistent
    report = ledger.verify()
    assert [(f.kind, f.partition, f.seq) for f in report.findings] == [
        ("checkpoint_mismatch", 1, 3)
    ]
    assert any("could not be compared" in w for w in report.partitions[1].warnings)


def test_checkpoint_mismatch_later_checkpoint() -> None:
    ledger, _ = memory_ledger("rw2", 1)
    ledger.append_many([b"a"] * 5)
    ledger.checkpoint()
    ledger.append_many([b"b"] * 5)
    ledger.checkpoint()
    recs = records_of(ledger)
    # rewrite entries 6..9 with a chain continuing from the genuine entry 5
    del recs[6:]
    for seq in range(6, 10):
        recs.append(tamper.forge(recs[5], seq, decode_record(recs[-1]).leaf_hash, b"evil"))
    assert findings(ledger) == [("checkpoint_mismatch", 0, 9, None)]


def _extra_checkpoint(ledger: Ledger, note: str, partition: int = 0) -> None:
    ledger.backend.add_checkpoint(ledger.name, partition, 0, note)


def test_untrusted_checkpoint_unknown_key() -> None:
    ledger, _ = memory_ledger("uk", 1, 6, checkpoint=True)
    impostor = SigningKey.generate("uk-log-key")  # same name, different key
    root = bytes.fromhex(ledger.verify().partitions[0].root_hash)
    cp = Checkpoint(ledger.config.checkpoint_origin(0), 6, root)
    _extra_checkpoint(ledger, sign_checkpoint(cp, impostor))
    assert findings(ledger) == [("untrusted_checkpoint", 0, 5, None)]


def test_untrusted_checkpoint_bad_signature() -> None:
    ledger, _ = memory_ledger("bs", 1, 6, checkpoint=True)
    ledger.append_many([b"more"] * 2)
    note = ledger.checkpoint()[0]
    body, sig = note.split("\n\n", 1)
    b64 = sig.split(" ")[2]
    bad = b64[:10] + ("A" if b64[10] != "A" else "B") + b64[11:]
    ledger.backend._part("bs", 0).checkpoints[-1] = note.replace(b64, bad)
    assert findings(ledger) == [("untrusted_checkpoint", 0, 7, None)]


def test_checkpoint_fork() -> None:
    ledger, key = memory_ledger("fk", 1, 6, checkpoint=True)
    forged = Checkpoint(ledger.config.checkpoint_origin(0), 6, bytes(32))
    _extra_checkpoint(ledger, sign_checkpoint(forged, key))
    assert findings(ledger) == [("checkpoint_fork", 0, 5, None)]


def test_checkpoint_fork_forged_first() -> None:
    ledger, key = memory_ledger("fk2", 1, 6)
    forged = Checkpoint(ledger.config.checkpoint_origin(0), 6, bytes(32))
    _extra_checkpoint(ledger, sign_checkpoint(forged, key))
    ledger.backend._part("fk2", 0).checkpoints.append(
        sign_checkpoint(
            Checkpoint(
                ledger.config.checkpoint_origin(0),
                6,
                bytes.fromhex(ledger.verify().partitions[0].root_hash),
            ),
            key,
        )
    )
    assert findings(ledger) == [("checkpoint_fork", 0, 5, None)]


def test_checkpoint_of_another_partition_is_bad() -> None:
    ledger, _ = memory_ledger("op", 2, 3, checkpoint=True)
    note = ledger.backend.checkpoints("op", 1)[0]
    _extra_checkpoint(ledger, note, 0)
    assert [f[0] for f in findings(ledger)] == ["bad_checkpoint"]


def test_without_trust_checkpoints_are_only_warned_about() -> None:
    ledger, _ = memory_ledger("nt", 1, 4, checkpoint=True)
    report = verify_partition(
        "nt",
        0,
        ledger.config.checkpoint_origin(0),
        ledger.backend.scan("nt", 0),
        ledger.backend.checkpoints("nt", 0),
        None,
    )
    assert report.ok
    assert any("not checked" in w for w in report.warnings)


def test_finding_json_and_str() -> None:
    ledger, _ = memory_ledger("js", 1, 4, checkpoint=True)
    tamper.edit_payload(records_of(ledger), 2)
    finding = ledger.verify().findings[0]
    assert finding.to_json()["kind"] == "payload_modified"
    assert str(finding).startswith("payload_modified: js/0 seq 2 (offset 2)")


# -- a real SQLite file -----------------------------------------------------------------------


def _sqlite_ledger(tmp_path, n: int = 8) -> tuple[Ledger, SigningKey]:
    key = SigningKey.generate("sq-log-key")
    ledger = Ledger.create(SQLiteBackend(tmp_path), "sq", partitions=2, signer=key)
    for p in range(2):
        ledger.append_many([f"{p}/{i}".encode() for i in range(n)], partition=p)
    ledger.checkpoint()
    return ledger, key


def _rows(tmp_path):
    return sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)


def test_sqlite_payload_edit_is_caught(tmp_path) -> None:
    ledger, _ = _sqlite_ledger(tmp_path)
    with _rows(tmp_path) as db:
        (rec,) = db.execute(
            "SELECT record FROM entries WHERE partition=1 AND position=5"
        ).fetchone()
        db.execute(
            "UPDATE entries SET record=? WHERE partition=1 AND position=5",
            (bytes(rec[:-1]) + b"!",),
        )
    assert findings(ledger) == [("payload_modified", 1, 5, 5)]


def test_sqlite_deleted_and_truncated_rows_are_caught(tmp_path) -> None:
    ledger, _ = _sqlite_ledger(tmp_path)
    with _rows(tmp_path) as db:
        db.execute("DELETE FROM entries WHERE partition=0 AND position=3")
        db.execute("DELETE FROM entries WHERE partition=1 AND position>=6")
    assert findings(ledger) == [("missing", 0, 3, 4), ("truncated", 1, 6, None)]


def test_sqlite_header_edit_is_caught(tmp_path) -> None:
    ledger, _ = _sqlite_ledger(tmp_path)
    with _rows(tmp_path) as db:
        (rec,) = db.execute(
            "SELECT record FROM entries WHERE partition=0 AND position=7"
        ).fetchone()
        recs = [bytes(rec)]
        tamper.edit_header(recs, 0)
        db.execute("UPDATE entries SET record=? WHERE partition=0 AND position=7", (recs[0],))
    assert findings(ledger) == [("header_modified", 0, 7, 7)]


def test_verify_partition_takes_any_iterable() -> None:
    ledger, _ = memory_ledger("it", 1, 5, checkpoint=True)
    records = [StoredRecord(i, r) for i, r in enumerate(records_of(ledger))]
    report = verify_partition(
        "it",
        0,
        ledger.config.checkpoint_origin(0),
        iter(records),
        ledger.backend.checkpoints("it", 0),
        ledger.default_trust(),
    )
    assert report.ok and report.checkpoints_verified == 1 and report.tree_size == 5


def test_an_audit_does_not_pass_a_log_its_key_never_signed():
    """A topic copied with a recomputed chain (or stripped of its checkpoints) has a perfect
    hash chain; an auditor who names the log key must still not get a pass."""
    from streamledger.testing import memory_ledger

    ledger, key = memory_ledger(entries=5)  # appended, never checkpointed
    strict = TrustPolicy((key.verifier,), require_checkpoint=True)
    report = ledger.verify(strict)
    assert [f.kind for f in report.findings] == ["no_trusted_checkpoint"]
    assert ledger.verify(TrustPolicy((key.verifier,))).ok  # the default only warns
    ledger.checkpoint(key)
    assert ledger.verify(strict).ok


@pytest.mark.parametrize("enabled", [True, False])
def test_gc_is_paused_while_records_stream_and_restored_after(enabled: bool) -> None:
    """verify_partition pauses the cyclic GC while it reads records (also when the records
    raise) and leaves it as it found it; a verification inside another shares the pause."""
    import gc

    ledger, key = memory_ledger("gc", 1)
    ledger.append_many([b"a", b"b", b"c"])
    states: list[bool] = []

    def records(fail: bool = False):
        for record in ledger.backend.scan(ledger.name, 0):
            states.append(gc.isenabled())
            yield record
        if fail:
            raise RuntimeError("store failed")

    def verify(recs) -> None:
        report = verify_partition(
            ledger.name, 0, ledger.config.checkpoint_origin(0), recs, [], None
        )
        assert report.entries_checked == 3 and not report.findings

    def outer():
        yield from records()
        verify(records())  # nested: still paused afterwards
        states.append(gc.isenabled())

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        verify(records())
        assert states == [False] * 3 and gc.isenabled() is enabled
        states.clear()
        with pytest.raises(RuntimeError, match="store failed"):
            verify(records(fail=True))
        assert states == [False] * 3 and gc.isenabled() is enabled
        states.clear()
        verify_partition(ledger.name, 0, ledger.config.checkpoint_origin(0), outer(), [], None)
        assert states == [False] * 7 and gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


class _Batched:
    """A store iterator with ``take_batch`` (as the Kafka read-ahead has): the verifier's
    fast path takes its records in batches of random sizes, so every record in turn ends a
    batch and waits for its successor in the next one."""

    def __init__(self, records: list[StoredRecord], seed: int) -> None:
        import random

        self.records, self.pos, self.rng = records, 0, random.Random(seed)
        self.taken: list[int] = []

    def __iter__(self) -> _Batched:
        return self

    def __next__(self) -> StoredRecord:
        if self.pos >= len(self.records):
            raise StopIteration
        self.pos += 1
        return self.records[self.pos - 1]

    def take_batch(self, limit: int) -> tuple[list[int], list[bytes]]:
        n = min(limit, self.rng.randrange(1, 6), len(self.records) - self.pos)
        part = self.records[self.pos : self.pos + n]
        self.pos += n
        self.taken.append(n)
        return [r.offset for r in part], [r.value for r in part]


@pytest.mark.parametrize(
    "edit", [None, "edit_payload", "edit_header", "delete", "duplicate", "swap"]
)
@pytest.mark.parametrize("seed", range(4))
def test_batched_source_gives_the_same_report_as_plain_iteration(edit, seed: int) -> None:
    """Checkpoints every 7 entries, one act of tampering anywhere: a source handing over
    records in small batches gives exactly the findings and tree of plain iteration."""
    import random

    from streamledger.core import _accel

    if _accel.native is None:
        pytest.skip("the batched fast path is the native one")
    ledger, key = memory_ledger("batched", 1)
    for start in range(0, 40, 7):
        ledger.append_many([f"e{seq}".encode() for seq in range(start, min(start + 7, 40))])
        ledger.checkpoint()
    if edit is not None:
        getattr(tamper, edit)(records_of(ledger), random.Random(seed).randrange(0, 38))
    records = [StoredRecord(i, r) for i, r in enumerate(records_of(ledger))]
    notes = ledger.backend.checkpoints("batched", 0)
    trust = TrustPolicy((key.verifier,))

    def run(source):
        report = verify_partition(
            "batched", 0, ledger.config.checkpoint_origin(0), source, notes, trust
        )
        found = [(f.kind, f.seq, f.offset) for f in report.findings]
        return found, report.entries_checked, report.tree_size, report.checkpoints_verified

    batched = _Batched(records, seed)
    assert run(batched) == run(iter(records))
    assert sum(batched.taken) > 20  # the records did go through take_batch
    if edit is None:
        assert run(iter(records))[0] == []
