"""Side documents beside a ledger (wrapped keys, cosignatures, membership): every backend
keeps them per ledger and kind, in order, and never mixes them into the log."""

import pytest

from streamledger import ConfigError, Ledger, MemoryBackend, SQLiteBackend


@pytest.fixture(params=["memory", "sqlite"])
def backend(request, tmp_path):
    store = MemoryBackend() if request.param == "memory" else SQLiteBackend(tmp_path)
    yield store
    store.close()


def test_documents_are_kept_per_kind_in_order_and_outside_the_log(backend):
    ledger = Ledger.create(backend, "docs", partitions=2)
    Ledger.create(backend, "other")
    ledger.append(b"entry")
    backend.put_document("docs", "keys", "epoch-1/alice", b"\x00wrapped-1")
    backend.put_document("docs", "cosignatures", "0/1", b"- w1 sig")
    backend.put_document("docs", "keys", "epoch-1/bob", b"\x01wrapped-2")
    assert backend.documents("docs", "keys") == [
        ("epoch-1/alice", b"\x00wrapped-1"),
        ("epoch-1/bob", b"\x01wrapped-2"),
    ]
    assert backend.documents("docs", "cosignatures") == [("0/1", b"- w1 sig")]
    assert backend.documents("other", "keys") == []
    stored = [r.value for p in range(2) for r in backend.scan("docs", p)]
    assert len(stored) == 1 and stored[0].endswith(b"entry")
    assert ledger.verify().ok


def test_document_kind_and_ledger_are_checked(backend):
    Ledger.create(backend, "docs")
    with pytest.raises(ConfigError, match="document kind"):
        backend.put_document("docs", "Bad Kind", "k", b"v")
    with pytest.raises(ConfigError, match="nope"):
        backend.put_document("nope", "keys", "k", b"v")
