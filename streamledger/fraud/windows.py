"""Event-time windows for the fraud pipeline: small, keyed, serializable.

We keep our own windowing module rather than take Quix Streams: Quix pins
``confluent-kafka < 2.13`` and brings its own producer, consumer and state store, while
streamledger already uses confluent-kafka directly with its own transactions and its
:class:`~streamledger.consumer.VerifiedConsumer` (every input entry is verified before it
is scored, which a framework's consumer would not do). What the detectors need is small:

* a **watermark**: the largest event time seen minus the grace period. An event older than
  the watermark is *late beyond grace*: it is counted and dropped with a reason. An event
  within grace is accepted wherever it falls (out of order), and windows keep their items
  sorted by event time, so rules see the same window whatever the arrival order.
* :class:`SlidingWindow`: per key (customer, asset, address, customer pair), the items of the
  last ``size_ms`` of event time.
* :class:`TumblingWindow`: per key, aggregates of fixed, aligned windows; a window is final
  once the watermark passes its end.
* :class:`Table`: per-key state without a time bound (profiles, open incidents).

A :class:`WindowSet` groups them with the watermark. Every key that changed since the last
:meth:`WindowSet.changes` is reported as ``{state key: JSON bytes or None (deleted)}``: a
changelog that the pipeline writes to a compacted topic (Kafka) or a side table (SQLite) in
the same transaction as its outputs, so the state after a restart is the state that matches
the committed input position. :meth:`WindowSet.snapshot` / :meth:`WindowSet.restore` give the
whole state at once.
"""

from __future__ import annotations

import bisect
import heapq
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Late",
    "SlidingWindow",
    "Table",
    "TumblingWindow",
    "Watermark",
    "WindowSet",
]

_SEP = "\x1f"  # between a window's name and a key in state keys
_META = "__meta__"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Late:
    """An event the windows refused: later than the grace period allows."""

    ts: int
    watermark: int
    reason: str


class Watermark:
    """Event-time progress: ``max event time seen - grace_ms``.

    With several sources (input partitions), each keeps its own maximum and the watermark
    is the smallest of them minus the grace: a partition read behind the others does not
    make its events late. Sources announced with :meth:`expect` hold the watermark back
    (None) until they produce; a source marked :meth:`idle` (caught up, nothing to read) does
    not hold it back until it produces again."""

    def __init__(self, grace_ms: int) -> None:
        if grace_ms < 0:
            raise ValueError("grace_ms must not be negative")
        self.grace_ms = int(grace_ms)
        self.max_by: dict[str, int] = {}
        self.waiting: set[str] = set()
        self.idle_sources: set[str] = set()

    def expect(self, sources: Iterable[str | int]) -> None:
        self.waiting |= {str(s) for s in sources} - set(self.max_by)

    def idle(self, source: str | int) -> None:
        self.idle_sources.add(str(source))
        self.waiting.discard(str(source))

    @property
    def max_ts(self) -> int | None:
        """The largest event time seen from any source."""
        return max(self.max_by.values()) if self.max_by else None

    @property
    def value(self) -> int | None:
        """The watermark (None before the first event)."""
        if self.waiting - self.idle_sources:
            return None
        active = [v for k, v in self.max_by.items() if k not in self.idle_sources]
        if not active:
            active = list(self.max_by.values())
        return min(active) - self.grace_ms if active else None

    def admit(self, ts: int, source: str | int = "") -> Late | None:
        """Accept ``ts`` of ``source`` (and advance) or return why it is refused."""
        wm = self.value
        if wm is not None and ts < wm:
            return Late(
                ts,
                wm,
                f"event time is {wm + self.grace_ms - ts} ms behind the stream's progress, "
                f"more than the grace period of {self.grace_ms} ms",
            )
        key = str(source)
        self.waiting.discard(key)
        self.idle_sources.discard(key)
        if ts > self.max_by.get(key, ts - 1):
            self.max_by[key] = ts
        return None


class _Keyed:
    """Per-key JSON-serializable data with dirty tracking."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.dirty: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def keys(self) -> list[str]:
        return list(self.data)

    def dump(self, key: str) -> Any:
        return self.data.get(key)

    def dump_json(self, key: str) -> bytes | None:
        """``dump(key)`` as compact JSON bytes (None for a deleted key)."""
        value = self.dump(key)
        return None if value is None else _dumps(value)

    def load(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def evict(self, watermark: int) -> None:  # pragma: no cover - overridden where needed
        pass


class SlidingWindow(_Keyed):
    """Per key, ``[ts, item]`` pairs of the last ``size_ms`` of event time, sorted by ``ts``
    (equal times keep arrival order). Items must be JSON-serializable.

    ``frozen_items=True`` promises that an item is never changed once added, except through
    :meth:`changed`: then the JSON of each row is encoded once and kept, and a changed key's
    changelog value is joined from those pieces (the same bytes as encoding the whole list
    again), so a busy key (a market maker's trades) costs its new rows, not all of them, per
    batch."""

    def __init__(
        self, size_ms: int, max_items: int = 10_000, *, frozen_items: bool = False
    ) -> None:
        super().__init__()
        if size_ms <= 0:
            raise ValueError("size_ms must be positive")
        self.size_ms = int(size_ms)
        self.max_items = max_items
        self.frozen_items = frozen_items
        self._encoded: dict[str, list[bytes | None]] = {}  # per key, aligned with its rows
        # (time of the key's oldest row, key), pushed whenever a key's oldest row changes, so
        # evict() visits only keys with rows to drop; entries that no longer match are skipped.
        self._heads: list[tuple[int, str]] = []

    def _head(self, key: str, rows: list) -> None:
        heapq.heappush(self._heads, (rows[0][0], key))
        if len(self._heads) > 4 * len(self.data) + 1024:  # drop the stale entries
            self._heads = [(r[0][0], k) for k, r in self.data.items() if r]
            heapq.heapify(self._heads)

    def add(self, key: str, ts: int, item: Any) -> None:
        rows = self.data.get(key)
        if rows is None:
            rows = self.data[key] = []
        first = rows[0][0] if rows else None
        enc = self._encoded.get(key) if self.frozen_items else None
        if enc is not None and len(enc) != len(rows):
            enc = None
            del self._encoded[key]
        if not rows or rows[-1][0] <= ts:
            rows.append([ts, item])
            if enc is not None:
                enc.append(None)
        else:
            at = bisect.bisect_right(rows, ts, key=lambda r: r[0])
            rows.insert(at, [ts, item])
            if enc is not None:
                enc.insert(at, None)
        # keep the key bounded: drop what left the window relative to its newest item
        horizon = rows[-1][0] - self.size_ms
        if rows[0][0] < horizon or len(rows) > self.max_items:
            cut = bisect.bisect_left(rows, horizon, key=lambda r: r[0])
            cut = max(cut, len(rows) - self.max_items)
            del rows[:cut]
            if enc is not None:
                del enc[:cut]
        if rows[0][0] != first:
            self._head(key, rows)
        self.dirty.add(key)

    def changed(self, key: str, item: Any) -> None:
        """``item`` (an item of ``key``, the object itself) was changed in place: mark the key
        changed and, with ``frozen_items``, encode that row again."""
        self.dirty.add(key)
        enc = self._encoded.get(key)
        if enc is None:
            return
        rows = self.data.get(key, ())
        if len(enc) != len(rows):
            del self._encoded[key]
            return
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][1] is item:
                enc[i] = None
                return
        del self._encoded[key]  # not found: encode the whole key again

    def delete(self, key: str) -> None:
        """Forget ``key`` (a deletion in the changelog if it was there)."""
        self._encoded.pop(key, None)
        if self.data.pop(key, None) is not None:
            self.dirty.add(key)

    def load(self, key: str, value: Any) -> None:
        self._encoded.pop(key, None)
        super().load(key, value)
        rows = self.data.get(key)
        if rows:
            self._head(key, rows)

    def dump_json(self, key: str) -> bytes | None:
        rows = self.data.get(key)
        if rows is None or not self.frozen_items:
            return super().dump_json(key)
        enc = self._encoded.get(key)
        if enc is None or len(enc) != len(rows):
            enc = self._encoded[key] = [None] * len(rows)
        for i, piece in enumerate(enc):
            if piece is None:
                enc[i] = _dumps(rows[i])
        return b"[" + b",".join(enc) + b"]"  # type: ignore[arg-type]

    def items(self, key: str, since: int | None = None, until: int | None = None) -> list:
        """``[ts, item]`` pairs of ``key`` with ``since <= ts <= until``."""
        rows = self.data.get(key)
        if not rows:
            return []
        lo = 0 if since is None else bisect.bisect_left(rows, since, key=lambda r: r[0])
        hi = len(rows) if until is None else bisect.bisect_right(rows, until, key=lambda r: r[0])
        return rows[lo:hi]

    def evict(self, watermark: int) -> None:
        """Drop items older than ``watermark - size_ms`` (no later event can see them)."""
        horizon = watermark - self.size_ms
        heads = self._heads
        while heads and heads[0][0] < horizon:
            first, key = heapq.heappop(heads)
            rows = self.data.get(key)
            if not rows or rows[0][0] != first:
                continue  # stale: the key is gone or its oldest row changed (pushed again)
            cut = bisect.bisect_left(rows, horizon, key=lambda r: r[0])
            enc = self._encoded.get(key)
            if cut >= len(rows):
                del self.data[key]
                self._encoded.pop(key, None)
            else:
                del rows[:cut]
                if enc is not None:
                    if len(enc) == len(rows) + cut:
                        del enc[:cut]
                    else:
                        del self._encoded[key]
                heapq.heappush(heads, (rows[0][0], key))
            self.dirty.add(key)


class TumblingWindow(_Keyed):
    """Per key, one aggregate dict per aligned window ``[start, start + size_ms)``.

    ``add`` returns the window's aggregate to update in place; :meth:`close` returns the
    windows the watermark has passed (final) and forgets them."""

    def __init__(self, size_ms: int) -> None:
        super().__init__()
        if size_ms <= 0:
            raise ValueError("size_ms must be positive")
        self.size_ms = int(size_ms)

    def start_of(self, ts: int) -> int:
        return ts - ts % self.size_ms

    def add(self, key: str, ts: int) -> dict[str, Any]:
        windows = self.data.setdefault(key, {})
        self.dirty.add(key)
        return windows.setdefault(str(self.start_of(ts)), {})

    def get(self, key: str, ts: int) -> dict[str, Any] | None:
        return self.data.get(key, {}).get(str(self.start_of(ts)))

    def close(self, watermark: int) -> list[tuple[str, int, dict[str, Any]]]:
        closed = []
        for key in list(self.data):
            windows = self.data[key]
            for start in [s for s in windows if int(s) + self.size_ms <= watermark]:
                closed.append((key, int(start), windows.pop(start)))
                self.dirty.add(key)
            if not windows:
                del self.data[key]
        closed.sort(key=lambda c: (c[1], c[0]))
        return closed

    evict = close  # type: ignore[assignment]


class Table(_Keyed):
    """Per-key state without a time bound; entries with a ``"_until"`` event time are dropped
    once the watermark passes it."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty.add(key)

    def touch(self, key: str) -> None:
        """Mark ``key`` changed (after mutating its value in place)."""
        self.dirty.add(key)

    def delete(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            self.dirty.add(key)

    def evict(self, watermark: int) -> None:
        for key in [
            k
            for k, v in self.data.items()
            if isinstance(v, dict) and v.get("_until") is not None and v["_until"] < watermark
        ]:
            del self.data[key]
            self.dirty.add(key)


class WindowSet:
    """A watermark with named windows and tables; late-event counters; changelog and
    snapshot serialization (see the module docstring)."""

    def __init__(self, grace_ms: int, parts: Mapping[str, _Keyed]) -> None:
        for name in parts:
            if _SEP in name or name == _META:
                raise ValueError(f"invalid window name {name!r}")
        self.watermark = Watermark(grace_ms)
        self.parts: dict[str, _Keyed] = dict(parts)
        self.late = 0
        self.late_reasons: dict[str, int] = {}
        self.meta: dict[str, Any] = {}  # small extra state saved with the watermark
        self._meta_dirty = True

    def __getitem__(self, name: str) -> Any:
        return self.parts[name]

    @property
    def grace_ms(self) -> int:
        return self.watermark.grace_ms

    def admit(self, ts: int, source: str | int = "") -> Late | None:
        """Accept an event time of ``source`` (advancing the watermark) or count it as late
        and say why."""
        late = self.watermark.admit(ts, source)
        self._meta_dirty = True
        if late is not None:
            self.late += 1
            kind = "late_beyond_grace"
            self.late_reasons[kind] = self.late_reasons.get(kind, 0) + 1
        return late

    def evict(self) -> None:
        """Drop what the watermark has made unreachable (call once per batch)."""
        wm = self.watermark.value
        if wm is None:
            return
        for part in self.parts.values():
            if not isinstance(part, TumblingWindow):  # tumbling windows close explicitly
                part.evict(wm)

    def mark_meta(self) -> None:
        self._meta_dirty = True

    # -- serialization -----------------------------------------------------------------
    def _meta_json(self) -> dict[str, Any]:
        return {
            "max_by": self.watermark.max_by,
            "grace_ms": self.watermark.grace_ms,
            "late": self.late,
            "late_reasons": self.late_reasons,
            "meta": self.meta,
        }

    def _load_meta(self, value: dict[str, Any]) -> None:
        self.watermark.max_by = {str(k): int(v) for k, v in value.get("max_by", {}).items()}
        self.late = int(value.get("late", 0))
        self.late_reasons = dict(value.get("late_reasons", {}))
        self.meta = dict(value.get("meta", {}))

    def changes(self) -> dict[str, bytes | None]:
        """``{state key: JSON value or None}`` of everything changed since the last call."""
        out: dict[str, bytes | None] = {}
        for name, part in self.parts.items():
            for key in part.dirty:
                out[name + _SEP + key] = part.dump_json(key)
            part.dirty.clear()
        if self._meta_dirty:
            out[_META] = json.dumps(self._meta_json(), separators=(",", ":")).encode()
            self._meta_dirty = False
        return out

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every state key with its value (the whole state, e.g. to seed a new changelog)."""
        yield _META, json.dumps(self._meta_json(), separators=(",", ":")).encode()
        for name, part in self.parts.items():
            for key in list(part.data):
                yield name + _SEP + key, part.dump_json(key) or b"null"

    def apply(self, changes: Iterable[tuple[str, bytes | None]]) -> None:
        """Load changelog records in order (later values of a key win; None deletes)."""
        for state_key, raw in changes:
            if state_key == _META:
                if raw is not None:
                    self._load_meta(json.loads(raw))
                continue
            name, sep, key = state_key.partition(_SEP)
            part = self.parts.get(name)
            if not sep or part is None:
                continue  # a window this version does not have
            part.load(key, None if raw is None else json.loads(raw))
        for part in self.parts.values():
            part.dirty.clear()
        self._meta_dirty = False

    def snapshot(self) -> bytes:
        """The whole state as one JSON document."""
        return json.dumps(
            {k: json.loads(v) for k, v in self.items()}, separators=(",", ":")
        ).encode()

    def restore(self, snapshot: bytes) -> None:
        data = json.loads(snapshot)
        for part in self.parts.values():
            part.data.clear()
        self.apply((k, json.dumps(v).encode()) for k, v in data.items())
