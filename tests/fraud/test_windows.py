"""The event-time windowing module on its own."""

from __future__ import annotations

import pytest

from streamledger.fraud.windows import SlidingWindow, Table, TumblingWindow, Watermark, WindowSet


def test_watermark_accepts_within_grace_and_refuses_beyond():
    wm = Watermark(grace_ms=1000)
    assert wm.value is None
    assert wm.admit(10_000) is None
    assert wm.value == 9_000
    assert wm.admit(9_500) is None  # out of order, within grace
    assert wm.value == 9_000  # an older event does not move the watermark back
    late = wm.admit(8_999)
    assert late is not None and late.watermark == 9_000
    assert "grace period of 1000 ms" in late.reason
    with pytest.raises(ValueError):
        Watermark(-1)


def test_sliding_window_keeps_event_time_order_and_evicts():
    w = SlidingWindow(size_ms=100)
    for ts in (10, 30, 20, 30, 5):
        w.add("k", ts, {"ts": ts})
    assert [r[0] for r in w.items("k")] == [5, 10, 20, 30, 30]
    assert [r[0] for r in w.items("k", since=10, until=20)] == [10, 20]
    w.add("k", 200, {"ts": 200})  # the key's own horizon moves: items before 100 go
    assert [r[0] for r in w.items("k")] == [200]
    w.add("other", 50, {})
    w.evict(watermark=200)  # horizon 100: "other" is empty and removed
    assert "other" not in w and "k" in w


def test_tumbling_window_closes_when_the_watermark_passes_its_end():
    t = TumblingWindow(size_ms=60)
    agg = t.add("BTC", 61)
    agg["n"] = agg.get("n", 0) + 1
    t.add("BTC", 119)["n"] += 1
    t.add("BTC", 121).setdefault("n", 1)
    assert t.get("BTC", 100) == {"n": 2}
    assert t.close(watermark=119) == []
    assert t.close(watermark=120) == [("BTC", 60, {"n": 2})]
    assert t.get("BTC", 121) == {"n": 1}


def test_late_events_are_counted_and_dropped_with_a_reason():
    ws = WindowSet(500, {"w": SlidingWindow(1000)})
    assert ws.admit(5_000) is None
    assert ws.admit(4_600) is None  # within grace
    late = ws.admit(4_400)
    assert late is not None and ws.late == 1
    assert ws.late_reasons == {"late_beyond_grace": 1}


def test_state_round_trips_as_changelog_and_snapshot():
    def make() -> WindowSet:
        return WindowSet(
            1000,
            {"s": SlidingWindow(10_000), "t": TumblingWindow(60_000), "p": Table()},
        )

    a = make()
    a.admit(1_000)
    a["s"].add("c1", 1_000, {"x": 1})
    a["t"].add("c1", 1_000)["sum"] = 5
    a["p"].set("c1", {"devices": ["d1"]})
    a.meta["alerts"] = 2
    log = list(a.changes().items())
    assert a.changes() == {}  # nothing changed since
    a["s"].add("c2", 2_000, {"x": 2})
    a["p"].delete("c1")
    a.admit(2_000)
    log += list(a.changes().items())

    b = make()
    b.apply(log)  # replaying the changelog (a compacted topic keeps the last value per key)
    assert b["s"].items("c2") == [[2_000, {"x": 2}]]
    assert "c1" not in b["p"]
    assert b["t"].get("c1", 1_000) == {"sum": 5}
    assert b.watermark.value == 1_000 and b.meta == {"alerts": 2}

    c = make()
    c.restore(a.snapshot())
    assert c.snapshot() == a.snapshot()
    assert c.changes().keys() == {"__meta__"} or c.changes() == {}


def test_table_entries_with_an_expiry_leave_after_the_watermark():
    ws = WindowSet(0, {"i": Table()})
    ws["i"].set("a", {"_until": 100})
    ws["i"].set("b", {"_until": 300})
    ws.admit(200)
    ws.evict()
    assert ws["i"].keys() == ["b"]


def test_frozen_items_give_the_same_changelog_bytes():
    import random

    rng = random.Random(3)
    sets = [
        WindowSet(50, {"s": SlidingWindow(300, max_items=20, frozen_items=frozen)})
        for frozen in (False, True)
    ]
    ts = 0
    for step in range(3_000):
        ts += rng.randint(0, 20)
        key = f"k{rng.randint(0, 5)}"
        late = ts - rng.randint(0, 40)  # out of order within grace: inserted in the middle
        item = {"id": step, "v": rng.random(), "s": "é"}
        for ws in sets:
            ws.admit(late)
            ws["s"].add(key, late, dict(item))
            if step % 97 == 0:
                ws.evict()
        if step % 13 == 0:
            plain, frozen = (ws.changes() for ws in sets)
            assert plain == frozen
        if step == 1_500:  # a restored window starts its cache afresh
            for ws in sets:
                ws.apply(list(sets[0].items()))
    assert list(sets[0].items()) == list(sets[1].items())


def _naive_evict(data: dict, size_ms: int, watermark: int) -> set:
    """Every key scanned: what SlidingWindow.evict did before it kept a heap of key heads."""
    changed = set()
    for key in list(data):
        rows = [r for r in data[key] if r[0] >= watermark - size_ms]
        if len(rows) != len(data[key]):
            changed.add(key)
            if rows:
                data[key] = rows
            else:
                del data[key]
    return changed


def test_evict_visits_exactly_the_keys_a_full_scan_finds():
    import json
    import random

    rng = random.Random(4)
    for frozen in (False, True):
        w = SlidingWindow(size_ms=500, max_items=40, frozen_items=frozen)
        ref: dict = {}
        now = 0
        for step in range(4_000):
            now += rng.randint(0, 20)
            key = f"k{rng.randint(0, 30)}"
            ts = now - rng.randint(0, 300)  # out of order
            item = {"n": step}
            w.add(key, ts, item)
            rows = ref.setdefault(key, [])
            rows.append([ts, dict(item)])
            rows.sort(key=lambda r: r[0])  # stable: equal times keep arrival order
            horizon = rows[-1][0] - 500
            ref[key] = [r for r in rows if r[0] >= horizon][-40:]
            if step % 7 == 0:  # an item changed in place after it was added
                got = w.items(key)
                pick = rng.randrange(len(got))
                got[pick][1]["x"] = step
                w.changed(key, got[pick][1])
                ref[key][pick][1]["x"] = step
            if step % 97 == 0:
                w.delete(key)
                ref.pop(key, None)
            if step % 13 == 0:
                w.dirty.clear()
                wm = now - rng.randint(0, 200)
                w.evict(wm)
                assert w.dirty == _naive_evict(ref, 500, wm)
            if step % 50 == 0 or step == 3_999:
                assert w.data == ref
                for k in ref:
                    assert json.loads(w.dump_json(k)) == ref[k]
                    assert w.dump_json(k) == json.dumps(ref[k], separators=(",", ":")).encode()
    # a window restored from its changelog evicts the restored keys too
    w2 = SlidingWindow(size_ms=500, frozen_items=True)
    for k in w.data:
        w2.load(k, json.loads(w.dump_json(k)))
    w.evict(now + 10_000)
    w2.evict(now + 10_000)
    assert w2.data == {} and w.data == {}
