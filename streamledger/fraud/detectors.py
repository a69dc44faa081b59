"""Fraud detectors: one rule per pattern plus an online anomaly model (river).

:class:`Detectors` takes verified, parsed input events one at a time (with where each one
is in the input ledger) and returns :class:`Detection` objects: the suspicious events, each
with its detector, score, customers, event-time span, evidence (``{ledger, partition,
seq}`` of the input entries) and a reason a person understands. A detection that belongs to
an incident already reported (same pattern, same key - customer, customer pair and asset,
asset, address - while the incident is open) is not reported again, so each incident yields
one detection and one alert, whose id is ``make_alert_id(pattern, customers, anchor)`` with
the event that opened the incident as anchor: the same incident seen again (e.g. replayed
after a restart) has the same id.

All state lives in a :class:`~streamledger.fraud.windows.WindowSet` (per customer, per asset,
per customer pair, per address; event-time windows with a grace period) plus the anomaly
model, and is serializable: :meth:`Detectors.changes` gives the changelog of a batch,
:meth:`Detectors.apply` loads one. Detection depends on event time and input order only,
never on the wall clock, so a replay from the same state gives the same detections.

Thresholds come from ``thresholds.toml`` (package data) merged with an override file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from streamledger.errors import ConfigError
from streamledger.fraud.events import (
    ACCOUNT_TAKEOVER,
    ANOMALY,
    API_KEY_CREATED,
    BUY,
    DEPOSIT,
    IMPOSSIBLE_TRAVEL,
    LOGIN,
    MULE_PASSTHROUGH,
    ORDER,
    PASSWORD_RESET,
    PUMP_AND_DUMP,
    SELL,
    SEVERITIES,
    STRUCTURING,
    TRADE,
    WASH_TRADING,
    WITHDRAWAL,
    WITHDRAWAL_ADDRESS_ADDED,
    WITHDRAWAL_VELOCITY,
    Alert,
    Event,
    Evidence,
    country_distance_km,
    format_ts,
    make_alert_id,
)
from streamledger.fraud.hst_batch import BatchedHST
from streamledger.fraud.model_state import dump_hst, load_hst
from streamledger.fraud.windows import Late, SlidingWindow, Table, WindowSet

__all__ = [
    "Detection",
    "Detectors",
    "load_thresholds",
]

SENSITIVE = (PASSWORD_RESET, API_KEY_CREATED, WITHDRAWAL_ADDRESS_ADDED)
_MODEL_KEY = "__model__"
_DAY = 86_400_000
_PROFILE_LIST = 20  # devices, countries, addresses remembered per customer


# -- thresholds --------------------------------------------------------------------------
def default_thresholds() -> dict[str, dict[str, Any]]:
    text = resources.files("streamledger.fraud").joinpath("thresholds.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_thresholds(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The default thresholds, with the sections/keys of the TOML file ``path`` overriding
    them. Unknown sections or keys are refused (a typo must not silently keep a default)."""
    merged = default_thresholds()
    if path is None:
        return merged
    try:
        override = tomllib.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"thresholds file {path} is not valid TOML: {exc}") from None
    for section, values in override.items():
        if section not in merged or not isinstance(values, dict):
            raise ConfigError(
                f"thresholds file {path}: unknown section [{section}] "
                f"(known: {', '.join(sorted(merged))})"
            )
        for key, value in values.items():
            if key not in merged[section]:
                raise ConfigError(f"thresholds file {path}: unknown key {key!r} in [{section}]")
            if type(value) is not type(merged[section][key]) and not (
                isinstance(value, int | float) and isinstance(merged[section][key], int | float)
            ):
                raise ConfigError(
                    f"thresholds file {path}: [{section}] {key} must be a "
                    f"{type(merged[section][key]).__name__}"
                )
            merged[section][key] = value
    for section, values in merged.items():
        sev = values.get("severity")
        if sev is not None and sev not in SEVERITIES:
            raise ConfigError(f"[{section}] severity must be one of {', '.join(SEVERITIES)}")
    return merged


# -- detections --------------------------------------------------------------------------
@dataclass
class Detection:
    """A suspicious event: what a detector found, on which input entries."""

    detector: str
    pattern: str
    score: float
    customer_ids: list[str]
    first_ts: int
    last_ts: int
    evidence: list[Evidence]
    reason: str
    anchor: str
    severity: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return make_alert_id(self.pattern, self.customer_ids, self.anchor)

    @property
    def suspicious_id(self) -> str:
        digest = hashlib.sha256(f"{self.detector}\n{self.alert_id}".encode()).hexdigest()
        return f"susp-{digest[:32]}"

    def to_dict(self, detected_at_ms: int) -> dict[str, Any]:
        """The suspicious-events entry."""
        return {
            "suspicious_id": self.suspicious_id,
            "detector": self.detector,
            "pattern": self.pattern,
            "score": round(self.score, 6),
            "customer_ids": sorted(set(self.customer_ids)),
            "first_ts": format_ts(self.first_ts),
            "last_ts": format_ts(self.last_ts),
            "detected_at": format_ts(detected_at_ms),
            "evidence": [e.to_dict() for e in self.evidence],
            "reason": self.reason,
            "alert_id": self.alert_id,
            **({"details": self.extra} if self.extra else {}),
        }

    def to_alert(self, detected_at_ms: int) -> Alert:
        return Alert.build(
            pattern=self.pattern,
            customer_ids=self.customer_ids,
            anchor=self.anchor,
            first_ts_ms=self.first_ts,
            last_ts_ms=self.last_ts,
            detected_at_ms=max(detected_at_ms, self.last_ts),
            severity=self.severity,
            score=min(1.0, max(0.0, self.score)),
            reason=self.reason,
            evidence=_unique(self.evidence),
        )


def _unique(evidence: Iterable[Evidence]) -> list[Evidence]:
    seen: dict[tuple[str, int, int], Evidence] = {}
    for e in evidence:
        seen.setdefault((e.ledger, e.partition, e.seq), e)
    return sorted(seen.values(), key=lambda e: (e.ledger, e.partition, e.seq))


def _usd(x: float | None) -> str:
    return f"{x:,.0f} USD" if x is not None else "an unknown amount"


def _ago(ms: int) -> str:
    minutes = ms / 60_000
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


# -- the detectors -----------------------------------------------------------------------
class Detectors:
    """Every rule and the anomaly model over one stream (see the module docstring).

    ``ledger`` names the input ledger (for evidence). ``grace_ms`` overrides
    ``[pipeline] grace_ms``."""

    def __init__(
        self,
        thresholds: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        ledger: str = "logs-customer-trading",
        grace_ms: int | None = None,
    ) -> None:
        self.t = copy.deepcopy(dict(thresholds or load_thresholds()))
        self.ledger = ledger
        grace = int(self.t["pipeline"]["grace_ms"] if grace_ms is None else grace_ms)
        t = self.t
        cust_window = max(
            t["account_takeover"]["window_ms"],
            t["withdrawal_velocity"]["window_ms"],
            t["structuring"]["window_ms"],
            t["mule_passthrough"]["window_ms"],
            t["impossible_travel"]["window_ms"],
        )
        self.state = WindowSet(
            grace,
            {
                # per customer: logins, sensitive changes, deposits, withdrawals, trade counts
                "cust": SlidingWindow(cust_window, max_items=2_000, frozen_items=True),
                # per (pair of customers, asset): their trades with each other
                "pair": SlidingWindow(
                    t["wash_trading"]["window_ms"], max_items=500, frozen_items=True
                ),
                # per (asset, customer): the customer's trades of the asset
                "held": SlidingWindow(
                    t["pump_and_dump"]["window_ms"], max_items=500, frozen_items=True
                ),
                # per asset: customers who sold at a profit (pump participants)
                "pump": SlidingWindow(
                    t["pump_and_dump"]["window_ms"], max_items=1_000, frozen_items=True
                ),
                # per asset: reference price (moving average of trades and near orders)
                "ref": Table(),
                # per asset: min/max trade price per minute (pump detection)
                "prices": Table(),
                # per external address: withdrawals of distinct customers to it
                "addr": SlidingWindow(
                    t["mule_passthrough"]["window_ms"], max_items=500, frozen_items=True
                ),
                # per customer: devices, countries, addresses, amount habits (no time bound)
                "profile": Table(),
                # open incidents: pattern|key -> anchor, customers, until (event time)
                "incident": Table(),
            },
        )
        self._model: Any = None
        self._learner: BatchedHST | None = None  # learns self._model in bulk, exactly
        self._model_dirty = False
        #: counters for the live view and the run summary
        self.counts: dict[str, int] = {}

    @property
    def grace_ms(self) -> int:
        return self.state.grace_ms

    # -- state ------------------------------------------------------------------------
    def changes(self) -> dict[str, bytes | None]:
        """Changelog of everything changed since the last call (window state and model)."""
        out = self.state.changes()
        if self._model_dirty and self._model is not None:
            self._flush_model()
            out[_MODEL_KEY] = dump_hst(self._model)
            self._model_dirty = False
        return out

    def items(self) -> list[tuple[str, bytes]]:
        out = list(self.state.items())
        if self._model is not None:
            self._flush_model()
            out.append((_MODEL_KEY, dump_hst(self._model)))
        return out

    def apply(self, changes: Iterable[tuple[str, bytes | None]]) -> None:
        """Load a changelog (state recovered after a restart). The anomaly model's state is
        JSON data (:mod:`streamledger.fraud.model_state`); anything else under its key raises
        :class:`~streamledger.errors.FormatError` and nothing of it is executed."""
        rest = []
        for key, value in changes:
            if key == _MODEL_KEY:
                self._model = load_hst(value) if value else None
                self._learner = None
            else:
                rest.append((key, value))
        self.state.apply(rest)
        self._model_dirty = False

    def end_batch(self) -> None:
        """Evict what the watermark made unreachable (call after each batch)."""
        self.state.evict()

    # -- input --------------------------------------------------------------------------
    def process(self, event: Event, where: Evidence) -> list[Detection] | Late:
        """Score one event. Returns its detections, or :class:`Late` when the event is later
        than the grace period allows (counted, not scored)."""
        late = self.state.admit(event.ts_ms, where.partition)
        if late is not None:
            self.counts["late"] = self.counts.get("late", 0) + 1
            return late
        self.counts["events"] = self.counts.get("events", 0) + 1
        item = _item(event, where)
        found: list[Detection] = []
        kind = event.type
        if kind == LOGIN:
            found += self._impossible_travel(event, item)
            self._login(event, item)
        elif kind in SENSITIVE:
            self._add_cust(event, item)
            found += self._account_takeover(event, item)
            if kind == WITHDRAWAL_ADDRESS_ADDED:
                self._remember(event.customer_id, "new_addr", event.address)
        elif kind == DEPOSIT:
            self._add_cust(event, item)
            found += self._structuring(event, item)
        elif kind == WITHDRAWAL:
            self._add_cust(event, item)
            found += self._account_takeover(event, item)
            found += self._withdrawal_velocity(event, item)
            found += self._structuring(event, item)
            found += self._mule(event, item)
            self._remember(event.customer_id, "addr", event.address)
        elif kind == TRADE:
            self._trade_count(event, item)
            self._remember(event.customer_id, "cps", event.counterparty_id)
            found += self._wash(event, item)
            found += self._pump(event, item)
        if kind in (DEPOSIT, WITHDRAWAL, TRADE, ORDER):
            found += self._anomaly(event, item, found)
        out = []
        for d in found:
            if self._open_incident(d):
                out.append(d)
                self.counts[d.pattern] = self.counts.get(d.pattern, 0) + 1
        return out

    # -- helpers ------------------------------------------------------------------------
    def _ev(self, item: dict[str, Any]) -> Evidence:
        return Evidence(self.ledger, item["p"], item["s"])

    def _add_cust(self, event: Event, item: dict[str, Any]) -> None:
        self.state["cust"].add(event.customer_id, event.ts_ms, item)

    def _profile(self, customer: str) -> dict[str, Any]:
        prof = self.state["profile"].get(customer)
        if prof is None:
            prof = {"logins": 0}
            self.state["profile"].set(customer, prof)
        return prof

    def _remember(self, customer: str, name: str, value: str | None) -> None:
        if value is None:
            return
        prof = self._profile(customer)
        values = prof.setdefault(name, [])
        if value in values:
            values.remove(value)
        values.append(value)
        del values[:-_PROFILE_LIST]
        self.state["profile"].touch(customer)

    def _open_incident(self, d: Detection) -> bool:
        """True for a new incident; False when the detection belongs to an open one."""
        key = f"{d.pattern}|{d.extra.get('incident_key') or ','.join(sorted(d.customer_ids))}"
        d.extra.pop("incident_key", None)
        table = self.state["incident"]
        gap = int(self.t.get(d.pattern, {}).get("window_ms", _DAY))
        open_ = table.get(key)
        if open_ is not None and d.first_ts <= open_["_until"]:
            open_["_until"] = max(open_["_until"], d.last_ts + gap)
            table.touch(key)
            return False
        table.set(key, {"anchor": d.anchor, "_until": d.last_ts + gap})
        return True

    def _detection(
        self,
        pattern: str,
        score: float,
        customers: Iterable[str],
        items: list[dict[str, Any]],
        reason: str,
        anchor: str,
        incident_key: str | None = None,
        detector: str | None = None,
        **extra: Any,
    ) -> Detection:
        times = [i["ts"] for i in items]
        return Detection(
            detector=detector or pattern,
            pattern=pattern,
            score=float(min(1.0, max(0.0, score))),
            customer_ids=sorted(set(customers)),
            first_ts=min(times),
            last_ts=max(times),
            evidence=_unique(self._ev(i) for i in items),
            reason=reason,
            anchor=anchor,
            severity=self.t.get(pattern, {}).get("severity", "medium"),
            extra={**extra, **({"incident_key": incident_key} if incident_key else {})},
        )

    # -- logins -------------------------------------------------------------------------
    def _login(self, event: Event, item: dict[str, Any]) -> None:
        prof = self._profile(event.customer_id)
        item["new_dev"] = prof["logins"] >= self.t["account_takeover"]["min_prior_logins"] and (
            event.device_id not in prof.get("dev", [])
        )
        item["new_cty"] = prof["logins"] > 0 and event.country not in prof.get("cty", [])
        item["known_addr"] = list(prof.get("addr", []))
        prof["logins"] += 1
        self._add_cust(event, item)
        self._remember(event.customer_id, "dev", event.device_id)
        self._remember(event.customer_id, "cty", event.country)

    def _impossible_travel(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        t = self.t[IMPOSSIBLE_TRAVEL]
        window = self.state["cust"].items(
            event.customer_id, event.ts_ms - t["window_ms"], event.ts_ms + t["window_ms"]
        )
        logins = [r[1] for r in window if r[1]["t"] == LOGIN]
        before = [i for i in logins if i["ts"] <= event.ts_ms]
        after = [i for i in logins if i["ts"] > event.ts_ms]
        pairs = []
        if before:
            pairs.append((before[-1], item))
        if after:  # an out-of-order login lands between two others
            pairs.append((item, after[0]))
        for a, b in pairs:
            if not a.get("cty") or not b.get("cty") or a["cty"] == b["cty"]:
                continue
            km = country_distance_km(a["cty"], b["cty"])
            if km is None or km < t["min_distance_km"]:
                continue
            hours = max(b["ts"] - a["ts"], 1) / 3_600_000
            speed = km / hours
            if speed <= t["max_speed_kmh"]:
                continue
            score = min(1.0, 0.6 + 0.4 * (1 - t["max_speed_kmh"] / speed))
            return [
                self._detection(
                    IMPOSSIBLE_TRAVEL,
                    score,
                    [event.customer_id],
                    [a, b],
                    f"customer {event.customer_id} logged in from {a['cty']} and then from "
                    f"{b['cty']} {_ago(b['ts'] - a['ts'])} later: {km:,.0f} km, "
                    f"{speed:,.0f} km/h, faster than any flight",
                    anchor=b["id"],
                    speed_kmh=round(speed),
                )
            ]
        return []

    def _account_takeover(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        t = self.t[ACCOUNT_TAKEOVER]
        rows = self.state["cust"].items(event.customer_id, event.ts_ms - t["window_ms"])
        login = None
        for _, it in rows:
            if (
                it["t"] == LOGIN
                and it.get("new_dev")
                and (it.get("new_cty") or not t["require_new_country"])
                and it["ts"] <= event.ts_ms
            ):
                login = it
                break
        if login is None:
            return []
        after = [it for _, it in rows if login["ts"] <= it["ts"] <= event.ts_ms]
        changes = [it for it in after if it["t"] in SENSITIVE]
        kinds = {it["t"] for it in changes}
        if WITHDRAWAL_ADDRESS_ADDED not in kinds or len(kinds) < 2:
            return []
        added = {it.get("addr") for it in changes if it["t"] == WITHDRAWAL_ADDRESS_ADDED}
        withdrawals = [it for it in after if it["t"] == WITHDRAWAL and it.get("addr") in added]
        evidence = [login, *changes, *withdrawals]
        total = sum(w.get("amt") or 0 for w in withdrawals)
        what = ", ".join(sorted(k.replace("_", " ") for k in kinds))
        tail = f" and withdrew {_usd(total)} to it" if withdrawals else ""
        score = 0.8 + 0.1 * bool(login.get("new_cty")) + 0.05 * bool(withdrawals)
        return [
            self._detection(
                ACCOUNT_TAKEOVER,
                score,
                [event.customer_id],
                evidence,
                f"customer {event.customer_id} logged in from a new device"
                f"{' in a new country' if login.get('new_cty') else ''} ({login.get('dev')}, "
                f"{login.get('cty')}), then made changes ({what}){tail} within "
                f"{_ago(event.ts_ms - login['ts'])}",
                anchor=login["id"],
            )
        ]

    # -- money movements ----------------------------------------------------------------
    def _withdrawal_velocity(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        """Many withdrawals within one session (since the customer's latest login, or within
        the window when there was no login in it: an API session). Honest, very active
        customers also make many withdrawals in a quarter of an hour, but spread over
        several sessions of a few each; a burst in one session is scripted draining."""
        t = self.t[WITHDRAWAL_VELOCITY]
        rows = self.state["cust"].items(
            event.customer_id, event.ts_ms - t["window_ms"], event.ts_ms
        )
        session_start = max(
            (it["ts"] for _, it in rows if it["t"] == LOGIN), default=event.ts_ms - t["window_ms"]
        )
        wds = [it for _, it in rows if it["t"] == WITHDRAWAL and it["ts"] >= session_start]
        total = sum(it.get("amt") or 0 for it in wds)
        if len(wds) < t["min_count"] or total < t["min_total_usd"]:
            return []
        score = min(1.0, 0.6 + 0.05 * (len(wds) - t["min_count"]) + 0.1 * (total > 10_000))
        return [
            self._detection(
                WITHDRAWAL_VELOCITY,
                score,
                [event.customer_id],
                wds,
                f"customer {event.customer_id} made {len(wds)} withdrawals totalling "
                f"{_usd(total)} within {_ago(wds[-1]['ts'] - wds[0]['ts'])} in one session",
                anchor=wds[0]["id"],
            )
        ]

    def _structuring(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        """Repeated deposits (or withdrawals) just below the reporting threshold, and mostly
        nothing at or above it: an honest customer whose amounts are often near the
        threshold also goes over it, a structurer stays under."""
        t = self.t[STRUCTURING]
        limit = t["report_threshold_usd"]
        low = limit * (1 - t["band"])
        amount = event.amount_usd or 0
        if not low <= amount < limit:
            return []
        rows = self.state["cust"].items(event.customer_id, event.ts_ms - t["window_ms"])
        same = [it for _, it in rows if it["t"] == event.type and it["ts"] <= event.ts_ms]
        hits = [it for it in same if low <= (it.get("amt") or 0) < limit]
        over = [it for it in same if (it.get("amt") or 0) >= limit]
        if len(hits) < t["min_count"] or len(hits) < t["min_share"] * (len(hits) + len(over)):
            return []
        total = sum(it["amt"] for it in hits)
        return [
            self._detection(
                STRUCTURING,
                min(1.0, 0.7 + 0.05 * (len(hits) - t["min_count"])),
                [event.customer_id],
                hits,
                f"customer {event.customer_id} made {len(hits)} {event.type}s just below the "
                f"{_usd(limit)} reporting threshold ({_usd(total)} in all) within "
                f"{_ago(hits[-1]['ts'] - hits[0]['ts'])}",
                anchor=hits[0]["id"],
            )
        ]

    def _mule(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        t = self.t[MULE_PASSTHROUGH]
        out = []
        # several customers sending money to one external address
        addr_rows = self.state["addr"]
        addr_rows.add(event.address or "", event.ts_ms, item)
        senders = [
            it
            for _, it in addr_rows.items(event.address or "", event.ts_ms - t["window_ms"])
            if it["ts"] <= event.ts_ms
        ]
        customers = sorted({it["c"] for it in senders})
        if len(customers) >= t["shared_address_customers"]:
            out.append(
                self._detection(
                    MULE_PASSTHROUGH,
                    min(1.0, 0.7 + 0.05 * (len(customers) - t["shared_address_customers"])),
                    customers,
                    senders,
                    f"{len(customers)} customers withdrew "
                    f"{_usd(sum(s.get('amt') or 0 for s in senders))} "
                    f"to the same external address {event.address} within "
                    f"{_ago(senders[-1]['ts'] - senders[0]['ts'])}",
                    anchor=senders[0]["id"],
                    incident_key=f"addr:{event.address}",
                )
            )
        # money in and straight out again, to an address added after the money came in
        amount = event.amount_usd or 0
        if amount < t["min_amount_usd"]:
            return out
        rows = self.state["cust"].items(
            event.customer_id, event.ts_ms - t["window_ms"], event.ts_ms
        )
        deposits = [it for _, it in rows if it["t"] == DEPOSIT]
        if not deposits:
            return out
        first = deposits[0]["ts"]
        deposited = sum(it.get("amt") or 0 for it in deposits)
        added = {
            it.get("addr")
            for _, it in rows
            if it["t"] == WITHDRAWAL_ADDRESS_ADDED and it["ts"] >= first
        }
        outs = [
            it
            for _, it in rows
            if it["t"] == WITHDRAWAL and it["ts"] >= first and it.get("addr") in added
        ]
        sent = sum(it.get("amt") or 0 for it in outs)
        trades = sum(it.get("n", 0) for _, it in rows if it["t"] == "trades" and it["ts"] >= first)
        if (
            outs
            and deposited >= t["min_amount_usd"]
            and sent >= t["min_out_ratio"] * deposited
            and trades <= t["max_trades"]
        ):
            adds = [
                it for _, it in rows if it["t"] == WITHDRAWAL_ADDRESS_ADDED and it["ts"] >= first
            ]
            out.append(
                self._detection(
                    MULE_PASSTHROUGH,
                    min(1.0, 0.75 + 0.2 * min(1.0, sent / max(deposited, 1))),
                    [event.customer_id],
                    deposits + adds + outs,
                    f"customer {event.customer_id} received {_usd(deposited)} and sent "
                    f"{_usd(sent)} on to a newly added address within "
                    f"{_ago(event.ts_ms - first)}, with {trades} trade(s) in between",
                    anchor=deposits[0]["id"],
                )
            )
        return out

    # -- trading -------------------------------------------------------------------------
    def _trade_count(self, event: Event, item: dict[str, Any]) -> None:
        """Count trades per customer in 10-minute buckets (the mule rule's 'little trading')
        without keeping every trade of an active trader in the customer's window."""
        rows = self.state["cust"]
        bucket = event.ts_ms - event.ts_ms % 600_000
        for _, it in rows.items(event.customer_id, bucket, bucket + 599_999):
            if it["t"] == "trades":
                it["n"] += 1
                rows.changed(event.customer_id, it)
                return
        rows.add(event.customer_id, bucket, {"t": "trades", "ts": bucket, "n": 1})

    def _market_maker(self, customer: str | None) -> bool:
        """A customer trading with many different counterparties (a market maker) is not a
        wash trader or a pump participant by its volume alone."""
        if customer is None:
            return False
        prof = self.state["profile"].get(customer) or {}
        return len(prof.get("cps", [])) >= self.t[WASH_TRADING]["market_maker_counterparties"]

    def _wash(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        if not event.counterparty_id:
            return []
        if self._market_maker(event.customer_id) or self._market_maker(event.counterparty_id):
            return []
        t = self.t[WASH_TRADING]
        a, b = sorted((event.customer_id, event.counterparty_id))
        key = f"{a}|{b}|{event.asset}"
        win = self.state["pair"]
        win.add(key, event.ts_ms, item)
        rows = [it for _, it in win.items(key, event.ts_ms - t["window_ms"], event.ts_ms)]
        # one trade may be reported by both sides: count each (customer, event) once, and
        # express every trade as a signed quantity of customer a
        net_a, gross = 0.0, 0.0
        trades = set()
        for it in rows:
            q = it.get("q") or 0
            bought = it.get("side") == BUY
            sign = 1 if (it["c"] == a) == bought else -1
            ident = (it["ts"], round(q, 8), sign)
            if ident in trades:
                continue
            trades.add(ident)
            net_a += sign * q
            gross += q
        if len(trades) < t["min_trades"] or gross <= 0:
            return []
        sizes = [q for _, q, _ in trades]
        mean = gross / len(sizes)
        cv = math.sqrt(sum((q - mean) ** 2 for q in sizes) / len(sizes)) / mean
        if cv > t["max_size_cv"]:
            return []  # sizes of honest trading vary; wash trades repeat one size
        ratio = abs(net_a) / gross
        directions = {s for _, _, s in trades}
        if ratio > t["max_net_ratio"] or len(directions) < 2:
            return []
        return [
            self._detection(
                WASH_TRADING,
                min(1.0, 0.65 + 0.3 * (1 - ratio / max(t["max_net_ratio"], 1e-9))),
                [a, b],
                rows,
                f"customers {a} and {b} traded {event.asset} with each other {len(trades)} "
                f"times in both directions within {_ago(rows[-1]['ts'] - rows[0]['ts'])}, "
                f"ending with a net change of {abs(net_a) / gross:.0%} of the volume",
                anchor=rows[0]["id"],
                incident_key=key,
            )
        ]

    def _price_minutes(self, asset: str, ts: int, price: float | None) -> dict[str, list[float]]:
        """Per asset, min and max trade price per minute (this trade's price included); read
        through :meth:`_window_minutes`.

        A trade looks at the minutes up to its own minute only: a stored day replayed through
        Kafka is scored one partition's run after another, events of different partitions up
        to hours out of event-time order, and a top in this trade's future is not "the top
        it sold after". The minutes kept reach back the window before the watermark, so a
        trade scored behind newer ones still sees its whole window."""
        t = self.t[PUMP_AND_DUMP]
        table = self.state["prices"]
        minutes = table.get(asset)
        if minutes is None:
            minutes = {}
            table.set(asset, minutes)
        if price:
            key = str(ts // 60_000)
            lo_hi = minutes.get(key)
            minutes[key] = (
                [price, price] if lo_hi is None else [min(lo_hi[0], price), max(lo_hi[1], price)]
            )
            self._prune_minutes(minutes, t["window_ms"])
            table.touch(asset)
        return minutes

    def _window_minutes(self, asset: str, ts: int) -> dict[str, list[float]]:
        """The minutes of :meth:`_price_minutes` in the pump window ending at ``ts``'s minute."""
        minutes = self.state["prices"].get(asset) or {}
        minute = ts // 60_000
        oldest = (ts - self.t[PUMP_AND_DUMP]["window_ms"]) // 60_000
        return {k: v for k, v in minutes.items() if oldest <= int(k) <= minute}

    def _pump(self, event: Event, item: dict[str, Any]) -> list[Detection]:
        """A price run-up then a dump, with several customers who bought into the rise and
        sold after the top. Participants: customers (not market makers) with a buy of the
        asset at or before the minute of the window's highest price and a sell after it."""
        t = self.t[PUMP_AND_DUMP]
        key = f"{event.asset}|{event.customer_id}"
        held = self.state["held"]
        maker = self._market_maker(event.customer_id)
        if maker:
            # A market maker stays one (its counterparty list never shrinks below the
            # threshold) and its held trades are never read: do not keep (nor write) them.
            held.delete(key)
        else:
            held.add(key, event.ts_ms, item)
        self._price_minutes(event.asset or "", event.ts_ms, event.price_usd)
        if event.side != SELL or maker:
            return []
        minutes = self._window_minutes(event.asset or "", event.ts_ms)
        if not minutes:
            return []
        peak_min, (_, hi) = max(minutes.items(), key=lambda kv: (kv[1][1], -int(kv[0])))
        peak = int(peak_min) * 60_000
        lo = min(v[0] for k, v in minutes.items() if int(k) <= int(peak_min))
        if lo <= 0 or hi / lo - 1 < t["min_rise"] or event.ts_ms < peak:
            return []
        rows = [it for _, it in held.items(key, event.ts_ms - t["window_ms"], event.ts_ms)]
        buys = [it for it in rows if it.get("side") == BUY and it["ts"] < peak + 60_000]
        if not buys:
            return []  # bought into the rise, sold after the top
        pump = self.state["pump"]
        akey = event.asset or ""
        known = any(
            it["c"] == event.customer_id
            for _, it in pump.items(akey, event.ts_ms - t["window_ms"], event.ts_ms)
        )
        pump.add(
            akey,
            event.ts_ms,
            {"c": event.customer_id, "ts": event.ts_ms, "ev": [item] if known else [*buys, item]},
        )
        parts = [
            it for _, it in pump.items(akey, max(peak, event.ts_ms - t["window_ms"]), event.ts_ms)
        ]
        customers = sorted({it["c"] for it in parts})
        if len(customers) < t["min_participants"]:
            return []
        evidence = [e for it in parts for e in it["ev"]]
        rise = hi / lo - 1
        return [
            self._detection(
                PUMP_AND_DUMP,
                0.7 + 0.05 * (len(customers) - t["min_participants"]) + 0.2 * min(rise, 1),
                customers,
                evidence,
                f"{len(customers)} customers bought {event.asset} while its price rose "
                f"{rise:.0%} (from {lo:.6g} to {hi:.6g} USD) and sold after the top, within "
                f"{_ago(event.ts_ms - min(e['ts'] for e in evidence))}",
                anchor=min(evidence, key=lambda e: (e["ts"], e["id"]))["id"],
                incident_key=f"asset:{event.asset}",
            )
        ]

    def _market_price_dev(self, event: Event) -> float | None:
        """How far an order's price is from the asset's latest trade price at or before the
        order (when that trade is at most ``market_minutes`` older); None without one.

        "Latest" in event time, not the latest trade scored: a replay through Kafka scores
        the partitions up to hours out of order, and an order compared with a trade of its future
        (after a pump's dump, say) looks far off the market."""
        if not event.price_usd:
            return None
        refs = self.state["ref"]
        last = None
        recent = refs.get(f"{event.asset}|trades")
        if recent:
            minute = event.ts_ms // 60_000
            for k, pt in recent.items():
                if int(k) <= minute and pt[1] <= event.ts_ms and (last is None or pt[1] > last[1]):
                    last = pt
        else:  # state of an earlier version: the latest trade scored
            old = refs.get(f"{event.asset}|last")
            if old and old[1] <= event.ts_ms:
                last = old
        if not last:
            return None
        price, ts = last
        if event.ts_ms - ts > self.t[ANOMALY]["market_minutes"] * 60_000 or price <= 0:
            return None
        return abs(event.price_usd / price - 1)

    def _note_trade(self, asset: str, price: float, ts: int) -> None:
        """Remember ``[price, ts]`` of the asset's latest trade per minute, over the last
        ``market_minutes`` before the watermark."""
        refs = self.state["ref"]
        key = f"{asset}|trades"
        recent = refs.get(key)
        if recent is None:
            recent = {}
            refs.set(key, recent)
            refs.delete(f"{asset}|last")  # an earlier version's single latest trade
        minute = str(ts // 60_000)
        cur = recent.get(minute)
        if cur is None or ts >= cur[1]:
            recent[minute] = [price, ts]
        self._prune_minutes(recent, self.t[ANOMALY]["market_minutes"] * 60_000)
        refs.touch(key)

    def _prune_minutes(self, minutes: dict[str, Any], span_ms: int) -> None:
        """Drop the minutes no event still to come can look back to: those older than
        ``span_ms`` before the watermark (no event older than it is scored). Not relative to
        the newest event: a partition read ahead would drop what one behind still needs."""
        wm = self.state.watermark.value
        if wm is None:
            return
        keep = (wm - span_ms) // 60_000
        for k in [k for k in minutes if int(k) < keep]:
            del minutes[k]

    # -- the anomaly model -----------------------------------------------------------------
    def _anomaly(
        self, event: Event, item: dict[str, Any], found: list[Detection]
    ) -> list[Detection]:
        t = self.t[ANOMALY]
        amount = event.amount_usd
        if amount is None and event.quantity is not None and event.price_usd is not None:
            amount = event.quantity * event.price_usd
        if amount is None or amount <= 0:
            return []
        prof = self._profile(event.customer_id)
        n, mean, m2 = prof.setdefault("amt", [0, 0.0, 0.0])  # count, mean log, M2 (Welford)
        x = math.log1p(amount)
        std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
        z = (x - mean) / max(std, 0.25) if n > 1 else 0.0
        dev = 0.0
        if event.type in (ORDER, TRADE) and event.price_usd and event.asset:
            # against the asset's recent trades (a pump moves them, so its trades are not
            # off the market); without recent trades, against a moving reference price
            refs = self.state["ref"]
            ref = refs.get(event.asset)
            market = self._market_price_dev(event) if event.type == ORDER else 0.0
            if event.type == TRADE:
                self._note_trade(event.asset, event.price_usd, event.ts_ms)
            if market is not None:
                dev = market
            elif ref:
                dev = abs(event.price_usd / ref - 1)
            if not ref or dev < 0.1 or event.type == TRADE:  # off-market orders do not move it
                refs.set(
                    event.asset, event.price_usd if not ref else 0.8 * ref + 0.2 * event.price_usd
                )
        assets = prof.setdefault("assets", [])
        unseen = bool(event.asset) and event.asset not in assets  # never traded by them
        new_asset = unseen and len(assets) >= 3
        if event.asset and event.asset not in assets:
            assets.append(event.asset)
            del assets[:-_PROFILE_LIST]
        features = {
            "z": _squash(max(z, 0.0) / 8),
            "size": _squash(x / 16),
            "price_dev": _squash(dev / 0.5),
            "new_asset": 1.0 if new_asset else 0.0,
            "withdrawal": 1.0 if event.type == WITHDRAWAL else 0.0,
        }
        habit = (
            event.type == ORDER and n >= t["min_history"] and z >= t["min_amount_z"] and new_asset
        )
        # off the market, and corroborated by the customer's own habits: an amount above
        # their usual ones or an asset they never traded (an honest order placed just after
        # a sudden price move is off the last trade, but in their usual asset and size)
        off_market = dev >= t["min_price_dev"] and (unseen or z >= t["min_offmarket_z"])
        candidate = (
            event.type in (ORDER, TRADE)
            and amount >= t["min_amount_usd"]
            and (off_market or habit)
            and not found  # a rule explains it already
            and not self._market_maker(event.customer_id)
        )
        model = self._ensure_model()
        # scoring is pure: only the events the cheap gates let through are scored (the model
        # learns from every one); the score is the one it had before learning this event
        score = float(model.score_one(features)) if candidate else 0.0
        model.learn_one(features)  # deferred and done in bulk, river's result exactly
        self._model_dirty = True
        n += 1
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
        prof["amt"] = [n, mean, m2]
        self.state["profile"].touch(event.customer_id)
        if not candidate or score < t["threshold"]:
            return []
        return [
            self._detection(
                ANOMALY,
                score,
                [event.customer_id],
                [item],
                f"customer {event.customer_id}'s {event.type} of {_usd(amount)}"
                f"{f' in {event.asset}' if event.asset else ''} is far outside their habits "
                f"({z:.1f} standard deviations above their usual amounts"
                f"{f', {dev:.0%} off the market price' if dev >= 0.05 else ''}; "
                f"anomaly score {score:.2f})",
                anchor=event.event_id,
                detector="anomaly:half_space_trees",
            )
        ]

    def _flush_model(self) -> None:
        if self._learner is not None:
            self._learner.flush()

    def _ensure_model(self) -> BatchedHST:
        """The model, learning through :class:`BatchedHST` (read ``self._model`` only after
        :meth:`_flush_model`)."""
        if self._learner is None or self._learner.model is not self._model:
            self._flush_model()
            self._learner = BatchedHST(self._raw_model())
        return self._learner

    def _raw_model(self) -> Any:
        if self._model is None:
            from river.anomaly import HalfSpaceTrees

            t = self.t[ANOMALY]
            self._model = HalfSpaceTrees(
                n_trees=int(t["n_trees"]),
                height=int(t["height"]),
                window_size=int(t["window_size"]),
                seed=int(t["seed"]),
            )
        return self._model


def _squash(x: float) -> float:
    return max(0.0, min(1.0, x))


def _item(event: Event, where: Evidence) -> dict[str, Any]:
    """The compact form of an event kept in windows (JSON-serializable)."""
    item: dict[str, Any] = {
        "id": event.event_id,
        "ts": event.ts_ms,
        "t": event.type,
        "c": event.customer_id,
        "p": where.partition,
        "s": where.seq,
    }
    for name, value in (
        ("cty", event.country),
        ("dev", event.device_id),
        ("asset", event.asset),
        ("side", event.side),
        ("q", event.quantity),
        ("px", event.price_usd),
        ("amt", event.amount_usd),
        ("addr", event.address),
        ("cp", event.counterparty_id),
    ):
        if value is not None:
            item[name] = value
    return item


def detection_json(d: Detection, detected_at_ms: int) -> bytes:
    return json.dumps(d.to_dict(detected_at_ms), separators=(",", ":")).encode()
