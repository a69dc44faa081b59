"""``streamledger fraud simulate``: realistic exchange activity with labelled incidents.

A discrete-event simulation of an exchange. Customers have their own habits (home country,
devices, IPs, trading style and frequency, balance, favourite assets, known withdrawal
addresses); market makers quote and take the other side of customer trades; travellers
change country after a plausible gap; whales make large honest withdrawals. Incidents of
every pattern of ``events.PATTERNS`` are injected on top and described in a separate
labels file (``events.Label``), never in the events.

Deterministic for a seed: the same options give byte-identical events and labels (wall
time is only used by ``--realtime`` to pace output and to choose the start time).

Events come out in arrival order: event time plus a small delivery delay (usually tens of
milliseconds, at most ``MAX_JITTER_MS``), so a few arrive after a later event.

>>> sim = Simulation(SimConfig(customers=60, duration_s=600, rate=5, seed=7, incident_rate=0))
>>> events = list(sim.events())
>>> len(events) > 1000, sim.labels
(True, [])
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from streamledger.fraud import events as ev
from streamledger.fraud.events import Event, Label, format_ts, parse_ts

#: Deposits or withdrawals at or above this amount are reported (structuring stays under).
REPORTING_THRESHOLD_USD = 10_000.0
#: Largest delivery delay of an event after its event time (the pipeline's grace period
#: must be at least this).
MAX_JITTER_MS = 5_000
#: Honest travel is never faster than this (a flight including the airport).
HONEST_TRAVEL_KMH = 450.0
#: Impossible-travel incidents are at least this fast (far-apart countries minutes apart).
IMPOSSIBLE_TRAVEL_MIN_KM = 3_000.0
DEFAULT_START = "2024-05-01T00:00:00.000Z"

LIQUID_ASSETS: dict[str, float] = {
    "BTC": 62_000.0, "ETH": 3_100.0, "SOL": 145.0, "XRP": 0.52, "ADA": 0.45,
    "DOGE": 0.15, "LINK": 14.5, "AVAX": 35.0, "DOT": 7.0, "LTC": 82.0,
}  # fmt: skip
LIQUID_WEIGHTS = [30, 22, 10, 6, 5, 6, 5, 5, 5, 6]
LOW_CAP_ASSETS: dict[str, float] = {
    "PEPX": 0.0042, "MOONR": 0.081, "ZKRT": 0.36, "GLMB": 0.012, "FROGE": 0.0007,
}  # fmt: skip
ALL_PRICES = {**LIQUID_ASSETS, **LOW_CAP_ASSETS, "USDT": 1.0, "USD": 1.0}
DEPOSIT_ASSETS = ("USD", "USDT", "BTC", "ETH")
WITHDRAWAL_ASSETS = ("USDT", "BTC", "ETH")

# Home countries and their weight in the customer base (others of COUNTRY_LOCATIONS: 1).
COUNTRY_WEIGHTS = {
    "US": 20, "GB": 8, "DE": 8, "FR": 5, "ES": 4, "IT": 4, "NL": 3, "PL": 3, "TR": 4,
    "BR": 5, "IN": 6, "JP": 4, "KR": 4, "SG": 2, "AU": 3, "CA": 4, "NG": 3, "MX": 3,
    "VN": 3, "ID": 3, "AR": 2, "ZA": 2, "AE": 2, "CH": 2, "PH": 2, "UA": 2,
}  # fmt: skip
MM_COUNTRIES = ("SG", "GB", "US", "CH", "HK", "JP")

MINUTE = 60_000
HOUR = 60 * MINUTE

#: Events per second of a customer whose sessions need no stretching.
_CALM_RATE = 0.005
# (cumulative probability, action) of one action in an honest session
_TRADER_ACTIONS = ((0.55, "trade"), (0.82, "order"), (0.90, "deposit"), (0.96, "withdrawal"),
                   (1.01, "admin"))  # fmt: skip
_OTHER_ACTIONS = ((0.45, "trade"), (0.55, "order"), (0.80, "deposit"), (0.95, "withdrawal"),
                  (1.01, "admin"))  # fmt: skip


@dataclass
class SimConfig:
    customers: int = 2000
    duration_s: float = 4 * 3600.0
    rate: float = 20.0  # background events per second of event time
    seed: int = 1
    incident_rate: float = 4.0  # incidents per simulated hour (at least one of each pattern)
    start_ms: int = parse_ts(DEFAULT_START)

    def __post_init__(self) -> None:
        if self.customers < 50:
            raise ValueError("at least 50 customers are needed")
        if self.duration_s <= 0 or self.rate <= 0:
            raise ValueError("duration and rate must be positive")
        if self.incident_rate < 0:
            raise ValueError("incident rate must be >= 0")


@dataclass
class Customer:
    id: str
    home: str
    style: str  # trader | hodler | whale | market_maker
    rate: float  # expected events per second
    balance: float
    devices: list[str]
    ips: dict[str, list[str]]
    assets: list[str]
    addresses: dict[str, list[str]]  # withdrawal address book by asset family
    typical_usd: float
    country: str = ""
    traveller: bool = False
    trip_at: int | None = None
    trip_to: str | None = None
    trip_gap: int = 0
    travelled: bool = False
    last_login: tuple[str, int, str] | None = None  # event_id, ts, country
    last_end: int = 0
    last_deposit: int = -(10**15)
    blackouts: list[tuple[float, float]] = field(default_factory=list)
    in_incident: bool = False
    first_wake: int | None = None

    def ctx(self, device: str | None = None, ip: str | None = None) -> tuple[str, str, str]:
        return (
            ip or self.ips[self.country][0],
            self.country,
            device or self.devices[0],
        )


@dataclass
class _Incident:
    index: int
    pattern: str
    wake: int  # when its script (including context events) starts
    t0: int  # when the incident itself starts
    customers: list[Customer]
    params: dict[str, Any]
    event_ids: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    pending: int = 0
    done: bool = False
    description: str = ""


class Market:
    """Deterministic prices: a random walk per asset on a one-minute grid, independent of
    the order prices are asked in, times the multiplier of any pump under way."""

    def __init__(self, seed: int, start_ms: int) -> None:
        self.start = start_ms
        self._walks: dict[str, list[float]] = {}
        self._rngs = {a: random.Random(f"{seed}/market/{a}") for a in ALL_PRICES}
        self.pumps: list[tuple[str, int, int, int, float]] = []

    def price(self, asset: str, t: int) -> float:
        base = ALL_PRICES[asset]
        if asset in ("USD", "USDT"):
            return 1.0
        walk = self._walks.setdefault(asset, [0.0])
        idx = max(0, (t - self.start) // MINUTE)
        vol = 0.006 if asset in LOW_CAP_ASSETS else 0.0015
        rng = self._rngs[asset]
        while len(walk) <= idx:
            walk.append(walk[-1] + rng.gauss(0.0, vol))
        price = base * math.exp(walk[idx]) * self.pump_multiplier(asset, t)
        return float(f"{price:.6g}")

    def pump_multiplier(self, asset: str, t: int) -> float:
        mult = 1.0
        for a, start, peak, end, top in self.pumps:
            if a != asset or t < start:
                continue
            if t <= peak:
                mult *= 1 + (top - 1) * (t - start) / max(1, peak - start)
            elif t <= end:
                mult *= top - (top - 1) * 0.85 * (t - peak) / max(1, end - peak)
            elif t <= end + 30 * MINUTE:
                mult *= 1 + (top - 1) * 0.15
        return mult

    def pumped(self, asset: str, start: int, end: int) -> bool:
        return any(a == asset and s < end and start < e for a, s, _, e, _ in self.pumps)


class Simulation:
    """Iterate ``events()`` (arrival order); ``labels`` fills as incidents complete and
    ``lookalikes`` lists the honest activity that resembles an incident (not labelled)."""

    def __init__(
        self,
        config: SimConfig,
        *,
        on_label: Callable[[Label], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start = config.start_ms
        self.end = config.start_ms + int(config.duration_s * 1000)
        self.run_id = hashlib.sha256(f"streamledger-sim/{config.seed}".encode()).hexdigest()[:8]
        self.market = Market(config.seed, self.start)
        self.labels: list[Label] = []
        self.lookalikes: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {t: 0 for t in ev.EVENT_TYPES}
        self.emitted = 0
        self._on_label = on_label
        self._warn = warn or (lambda _msg: None)
        self._n = 0
        self._heap: list[tuple[int, int, int, Any]] = []
        self._arrivals: list[tuple[int, int, Event, _Incident | None]] = []
        self._incident_of: dict[str, _Incident] = {}
        self._country_prefix: dict[str, int] = {}
        self._mm_trades: dict[str, int] = {}
        self._session_events = 0
        self._make_population()
        self._plan_incidents()
        self._plan_lookalikes()

    # -- population ----------------------------------------------------------------------
    def _make_population(self) -> None:
        rng, cfg = self.rng, self.config
        countries = sorted(ev.COUNTRY_LOCATIONS)
        weights = [COUNTRY_WEIGHTS.get(c, 1) for c in countries]
        n_mm = min(12, max(3, cfg.customers // 100))
        mm_rate = 0.2 * cfg.rate / n_mm
        self.market_makers: list[Customer] = []
        for i in range(n_mm):
            country = MM_COUNTRIES[i % len(MM_COUNTRIES)]
            self.market_makers.append(
                Customer(
                    id=f"mm-{i + 1:02d}",
                    home=country,
                    country=country,
                    style="market_maker",
                    rate=mm_rate,
                    balance=rng.uniform(5e6, 5e7),
                    devices=[f"mm-bot-{i + 1:02d}"],
                    ips={country: [self._ip(country)]},
                    assets=list(LIQUID_ASSETS) + list(LOW_CAP_ASSETS),
                    addresses={"BTC": [self._address("BTC")], "EVM": [self._address("ETH")]},
                    typical_usd=50_000.0,
                )
            )
        self.customers: list[Customer] = []
        raw_weights = []
        for i in range(cfg.customers - n_mm):
            home = rng.choices(countries, weights)[0]
            roll = rng.random()
            style = "whale" if roll < 0.04 else "trader" if roll < 0.5 else "hodler"
            if style == "whale":
                balance = rng.uniform(150_000, 2_000_000)
            elif style == "trader":
                balance = rng.lognormvariate(math.log(6_000), 1.0)
            else:
                balance = rng.lognormvariate(math.log(2_500), 1.0)
            assets = rng.choices(list(LIQUID_ASSETS), LIQUID_WEIGHTS, k=rng.randint(1, 4))
            if rng.random() < 0.08:
                assets.append(rng.choice(list(LOW_CAP_ASSETS)))
            customer = Customer(
                id=f"cus-{i + 1:06d}",
                home=home,
                country=home,
                style=style,
                rate=0.0,
                balance=balance,
                devices=[self._device() for _ in range(rng.choice((1, 1, 2, 2, 3)))],
                ips={home: [self._ip(home) for _ in range(rng.choice((1, 1, 2)))]},
                assets=list(dict.fromkeys(assets)),
                addresses={
                    "BTC": [self._address("BTC")],
                    "EVM": [self._address("ETH") for _ in range(rng.choice((1, 2)))],
                },
                typical_usd=min(200_000.0, max(20.0, balance * rng.uniform(0.02, 0.15))),
            )
            self.customers.append(customer)
            factor = {"trader": 2.0, "hodler": 0.6, "whale": 0.8}[style]
            raw_weights.append(rng.lognormvariate(0.0, 1.0) * factor)
        total = sum(raw_weights)
        budget = 0.8 * cfg.rate
        for customer, weight in zip(self.customers, raw_weights, strict=True):
            customer.rate = budget * weight / total
        # Travellers: a few regular customers change country once, after a plausible gap.
        regular = [c for c in self.customers if c.style != "whale"]
        n_trav = max(1, len(regular) * 3 // 100)
        for k, customer in enumerate(rng.sample(regular, n_trav)):
            self._plan_trip(customer, forced=(k == 0))

    def _plan_trip(self, customer: Customer, *, forced: bool) -> None:
        rng = self.rng
        if forced:  # one traveller leaves early, so short runs have one too
            trip_at = self.start + int(rng.uniform(12, 18) * MINUTE)
        else:
            trip_at = self.start + int(rng.uniform(0.1, 0.6) * (self.end - self.start))
        options = []
        for dest in sorted(ev.COUNTRY_LOCATIONS):
            dist = ev.country_distance_km(customer.home, dest)
            if dest == customer.home or dist is None:
                continue
            gap = int((dist / HONEST_TRAVEL_KMH + 0.25) * HOUR)
            if trip_at + gap + 10 * MINUTE < self.end:
                options.append((dist, dest, gap))
        if not options:
            return
        options.sort()
        dist, dest, gap = options[0] if forced else rng.choice(options)
        customer.traveller = True
        customer.trip_at, customer.trip_to, customer.trip_gap = trip_at, dest, gap
        if forced:  # make sure it has a session at home before leaving
            customer.first_wake = self.start + int(rng.uniform(1, 8) * MINUTE)

    # -- ids and identities ----------------------------------------------------------------
    def _device(self) -> str:
        return f"dev-{self.rng.getrandbits(48):012x}"

    def _ip(self, country: str) -> str:
        first = self._country_prefix.get(country)
        if first is None:
            first = 11 + int(hashlib.sha256(country.encode()).hexdigest()[:4], 16) % 200
            self._country_prefix[country] = first
        r = self.rng.getrandbits(24)
        return f"{first}.{r >> 16}.{(r >> 8) & 255}.{max(1, r & 255)}"

    def _address(self, asset: str) -> str:
        if asset == "BTC":
            alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
            return "bc1q" + "".join(self.rng.choice(alphabet) for _ in range(38))
        return f"0x{self.rng.getrandbits(160):040x}"

    @staticmethod
    def _family(asset: str) -> str:
        return "BTC" if asset == "BTC" else "EVM"

    # -- scheduling ----------------------------------------------------------------------
    # heap kinds: 0 event, 1 customer wake, 2 market maker wake, 3 incident, 4 look-alike
    def _push(self, t: int, kind: int, obj: Any) -> None:
        self._n += 1
        heapq.heappush(self._heap, (int(t), self._n, kind, obj))

    def _event(
        self,
        t: int,
        customer: Customer,
        etype: str,
        ctx: tuple[str | None, str | None, str | None],
        incident: _Incident | None = None,
        **fields: Any,
    ) -> Event:
        self._n += 1
        t = int(t)
        event = Event(
            event_id=f"{self.run_id}-{self._n:010d}",
            ts=format_ts(t),
            ts_ms=t,
            customer_id=customer.id,
            type=etype,
            ip=ctx[0],
            country=ctx[1],
            device_id=ctx[2],
            **fields,
        )
        heapq.heappush(self._heap, (t, self._n, 0, (event, incident)))
        if incident is not None:
            incident.event_ids.append(event.event_id)
            incident.times.append(t)
            incident.pending += 1
        return event

    def _money(self, asset: str, usd: float, t: int) -> dict[str, Any]:
        price = self.market.price(asset, t)
        quantity = max(round(usd / price, 8), 1e-8)
        return {
            "asset": asset,
            "quantity": quantity,
            "price_usd": price,
            "amount_usd": round(quantity * price, 2),
        }

    def _trade(
        self,
        t: int,
        customer: Customer,
        ctx: tuple[str, str, str],
        asset: str,
        side: str,
        usd: float,
        other: Customer,
        incident: _Incident | None = None,
        other_incident: _Incident | None = None,
        price: float | None = None,
    ) -> list[Event]:
        money = self._money(asset, usd, t)
        if price is not None:
            money["price_usd"] = float(f"{price:.6g}")
            money["amount_usd"] = round(money["quantity"] * money["price_usd"], 2)
        mine = self._event(
            t, customer, ev.TRADE, ctx, incident, side=side, counterparty_id=other.id, **money
        )
        theirs = self._event(
            t,
            other,
            ev.TRADE,
            other.ctx(),
            other_incident,
            side=ev.SELL if side == ev.BUY else ev.BUY,
            counterparty_id=customer.id,
            **money,
        )
        if other.style == "market_maker":
            self._mm_trades[other.id] = self._mm_trades.get(other.id, 0) + 1
        return [mine, theirs]

    def _blocked(self, customer: Customer, t: int) -> float | None:
        for lo, hi in customer.blackouts:
            if lo <= t < hi:
                return hi
        return None

    # -- honest behaviour ------------------------------------------------------------------
    def _session(self, customer: Customer, t: int) -> int:
        """One login-to-logout session; returns the number of events it produced."""
        rng = self.rng
        if customer.traveller and not customer.travelled and t >= (customer.trip_at or 0):
            customer.travelled = True
            customer.country = customer.trip_to or customer.home
            customer.ips.setdefault(customer.country, [self._ip(customer.country)])
            leave = max(customer.last_end, customer.trip_at or 0)
            if t < leave + customer.trip_gap:
                self._push(leave + customer.trip_gap + rng.randint(0, 20 * MINUTE), 1, customer)
                return 0
        if rng.random() < 0.01:  # an honest new phone at home
            customer.devices.append(self._device())
        device = rng.choice(customer.devices)
        ip = rng.choice(customer.ips[customer.country])
        ctx = (ip, customer.country, device)
        start_n = self._n
        login = self._event(t, customer, ev.LOGIN, ctx)
        if customer.traveller and customer.travelled and customer.last_login is not None:
            prev_id, prev_ts, prev_country = customer.last_login
            if prev_country != customer.country:
                dist = ev.country_distance_km(prev_country, customer.country) or 0.0
                self.lookalikes.append(
                    {
                        "kind": "traveller",
                        "customer_id": customer.id,
                        "event_ids": [prev_id, login.event_id],
                        "from": prev_country,
                        "to": customer.country,
                        "distance_km": round(dist),
                        "gap_minutes": round((t - prev_ts) / MINUTE),
                    }
                )
        customer.last_login = (login.event_id, t, customer.country)
        # very active customers have longer, denser sessions rather than more of them
        intensity = min(200.0, max(1.0, customer.rate / _CALM_RATE))
        mean_actions = (3.5 if customer.style == "trader" else 1.2) * intensity
        n_actions = 1 + min(int(12 * intensity), int(rng.expovariate(1 / mean_actions)))
        pause_max = max(2_000, int(90_000 / intensity))
        did_deposit = did_withdraw = False
        withdrawals = 0
        bias = rng.choice(ev.SIDES)  # a session mostly buys or mostly sells
        for _ in range(n_actions):
            t += rng.randint(pause_max // 18, pause_max)
            if t > self.end:
                break
            roll = rng.random()
            table = _TRADER_ACTIONS if customer.style == "trader" else _OTHER_ACTIONS
            kind = next(name for limit, name in table if roll < limit)
            if kind == "withdrawal" and withdrawals >= 2:
                kind = "order"
            if kind == "deposit" and did_withdraw or kind == "withdrawal" and did_deposit:
                kind = "order"
            if kind == "trade":
                t = self._honest_trade(customer, ctx, t, bias)
            elif kind == "order":
                asset = rng.choice(customer.assets)
                usd = customer.typical_usd * rng.lognormvariate(0, 0.5)
                side = rng.choice(ev.SIDES)
                money = self._money(asset, usd, t)
                money["price_usd"] = float(f"{money['price_usd'] * rng.uniform(0.97, 1.03):.6g}")
                self._event(t, customer, ev.ORDER, ctx, side=side, **money)
            elif kind == "deposit":
                did_deposit = True
                asset = rng.choice(DEPOSIT_ASSETS)
                usd = customer.typical_usd * rng.lognormvariate(0.5, 0.8)
                if rng.random() < 0.3:
                    usd = round(usd, -2) or 100.0
                address = None if asset == "USD" else self._address(asset)
                self._event(
                    t, customer, ev.DEPOSIT, ctx, address=address, **self._money(asset, usd, t)
                )
                customer.balance += usd
                customer.last_deposit = t
            elif kind == "withdrawal":
                if customer.balance < 50:
                    continue
                did_withdraw = True
                withdrawals += 1
                asset = rng.choice(WITHDRAWAL_ASSETS)
                book = customer.addresses[self._family(asset)]
                if rng.random() < 0.05 and t - customer.last_deposit > 24 * HOUR:
                    book.append(self._address(asset))
                    self._event(t, customer, ev.WITHDRAWAL_ADDRESS_ADDED, ctx, address=book[-1])
                    t += rng.randint(20_000, 120_000)
                usd = customer.balance * rng.uniform(0.05, 0.4)
                address = rng.choice(book)
                self._event(
                    t, customer, ev.WITHDRAWAL, ctx, address=address, **self._money(asset, usd, t)
                )
                customer.balance -= usd
            else:
                etype = ev.API_KEY_CREATED if rng.random() < 0.6 else ev.PASSWORD_RESET
                self._event(t, customer, etype, ctx)
        if rng.random() < 0.8:
            t += rng.randint(2_000, 60_000)
            self._event(t, customer, ev.LOGOUT, ctx)
        customer.last_end = max(customer.last_end, t)
        return self._n - start_n

    def _honest_trade(
        self, customer: Customer, ctx: tuple[str, str, str], t: int, bias: str | None = None
    ) -> int:
        rng = self.rng
        asset = rng.choice(customer.assets)
        side = bias if bias is not None and rng.random() < 0.8 else rng.choice(ev.SIDES)
        usd = customer.typical_usd * rng.lognormvariate(0, 0.6)
        money = self._money(asset, usd, t)
        self._event(t, customer, ev.ORDER, ctx, side=side, **money)
        t += rng.randint(200, 20_000)
        self._trade(t, customer, ctx, asset, side, usd, rng.choice(self.market_makers))
        return t

    def _market_maker(self, mm: Customer, t: int) -> None:
        rng = self.rng
        if mm.last_login is None or t - mm.last_login[1] > HOUR:
            login = self._event(t, mm, ev.LOGIN, mm.ctx())
            mm.last_login = (login.event_id, t, mm.country)
        roll = rng.random()
        if roll < 0.0005:  # a large treasury move
            asset = rng.choice(WITHDRAWAL_ASSETS)
            usd = rng.uniform(100_000, 1_000_000)
            if rng.random() < 0.5:
                address = rng.choice(mm.addresses[self._family(asset)])
                self._event(
                    t, mm, ev.WITHDRAWAL, mm.ctx(), address=address, **self._money(asset, usd, t)
                )
            else:
                address = self._address(asset)
                self._event(
                    t, mm, ev.DEPOSIT, mm.ctx(), address=address, **self._money(asset, usd, t)
                )
        else:
            asset = rng.choices(list(LIQUID_ASSETS), LIQUID_WEIGHTS)[0]
            usd = rng.uniform(2_000, 100_000)
            money = self._money(asset, usd, t)
            money["price_usd"] = float(f"{money['price_usd'] * rng.uniform(0.998, 1.002):.6g}")
            self._event(t, mm, ev.ORDER, mm.ctx(), side=rng.choice(ev.SIDES), **money)
        self._push(t + max(1, int(rng.expovariate(mm.rate) * 1000)), 2, mm)

    # -- look-alikes -------------------------------------------------------------------------
    def _plan_lookalikes(self) -> None:
        rng = self.rng
        whales = [c for c in self.customers if c.style == "whale" and not c.in_incident]
        if not whales:
            whale = next(c for c in self.customers if not c.in_incident and not c.traveller)
            whale.style, whale.balance = "whale", 400_000.0
            whales = [whale]
        whale = rng.choice(whales)
        whale.balance = max(whale.balance, 150_000.0)
        t = self.start + int(rng.uniform(0.2, 0.8) * (self.end - self.start))
        self._push(t, 4, whale)
        for mm in self.market_makers:
            self.lookalikes.append({"kind": "market_maker", "customer_id": mm.id})

    def _large_withdrawal(self, whale: Customer, t: int) -> None:
        rng = self.rng
        ctx = (whale.ips[whale.country][0], whale.country, whale.devices[0])
        login = self._event(t, whale, ev.LOGIN, ctx)
        t += rng.randint(20_000, 120_000)
        asset = rng.choice(("BTC", "USDT"))
        usd = max(50_000.0, whale.balance * rng.uniform(0.4, 0.8))
        address = whale.addresses[self._family(asset)][0]
        withdrawal = self._event(
            t, whale, ev.WITHDRAWAL, ctx, address=address, **self._money(asset, usd, t)
        )
        whale.balance -= usd
        self._event(t + rng.randint(5_000, 60_000), whale, ev.LOGOUT, ctx)
        self.lookalikes.append(
            {
                "kind": "large_withdrawal",
                "customer_id": whale.id,
                "event_ids": [login.event_id, withdrawal.event_id],
                "amount_usd": withdrawal.amount_usd,
            }
        )

    # -- incidents ---------------------------------------------------------------------------
    def _plan_incidents(self) -> None:
        rng, cfg = self.rng, self.config
        if cfg.incident_rate <= 0:
            self.incidents: list[_Incident] = []
            return
        hours = (self.end - self.start) / HOUR
        n = max(len(ev.PATTERNS), round(cfg.incident_rate * hours))
        order: list[str] = []
        while len(order) < n:
            batch = list(ev.PATTERNS)
            rng.shuffle(batch)
            order.extend(batch)
        pool = [c for c in self.customers if not c.traveller]
        rng.shuffle(pool)
        self.incidents = []
        skipped: list[str] = []
        for pattern in order[:n]:
            incident = self._plan_one(pattern, pool)
            if incident is None:
                skipped.append(pattern)
                continue
            self.incidents.append(incident)
            self._push(incident.wake, 3, incident)
        if skipped:
            self._warn(
                f"simulate: no room in this run (too short) for {len(skipped)} incident(s): "
                f"{', '.join(sorted(set(skipped)))}; skipped"
            )

    def _take(
        self, pool: list[Customer], k: int, want: Callable[[Customer], bool]
    ) -> list[Customer] | None:
        chosen = [c for c in pool if want(c)][:k]
        if len(chosen) < k:
            chosen += [c for c in pool if c not in chosen][: k - len(chosen)]
        if len(chosen) < k:
            return None
        for c in chosen:
            pool.remove(c)
            c.in_incident = True
        return chosen

    def _plan_one(self, pattern: str, pool: list[Customer]) -> _Incident | None:
        rng = self.rng
        durations = {  # upper bound of the incident's own span
            ev.ACCOUNT_TAKEOVER: 25, ev.IMPOSSIBLE_TRAVEL: 45, ev.WITHDRAWAL_VELOCITY: 15,
            ev.WASH_TRADING: 35, ev.PUMP_AND_DUMP: 45, ev.STRUCTURING: 60,
            ev.MULE_PASSTHROUGH: 40, ev.ANOMALY: 5,
        }  # fmt: skip
        span = durations[pattern] * MINUTE
        params: dict[str, Any] = {}
        pre = 5 * MINUTE
        if pattern == ev.ACCOUNT_TAKEOVER:
            people = self._take(pool, 1, lambda c: c.style != "whale" and _neighbours(c.home))
            if people is None:
                return None
            near = _neighbours(people[0].home) or [
                min(
                    (c for c in ev.COUNTRY_LOCATIONS if c != people[0].home),
                    key=lambda c: ev.country_distance_km(people[0].home, c) or 1e9,
                )
            ]
            country = rng.choice(near)
            dist = ev.country_distance_km(people[0].home, country) or 0.0
            gap = int((dist / HONEST_TRAVEL_KMH + 0.3) * HOUR)
            params = {"country": country, "gap": gap}
            pre = gap + 5 * MINUTE
        elif pattern == ev.IMPOSSIBLE_TRAVEL:
            people = self._take(pool, 1, lambda c: True)
        elif pattern == ev.WASH_TRADING:
            people = self._take(pool, 2, lambda c: c.style == "trader")
        elif pattern == ev.PUMP_AND_DUMP:
            people = self._take(pool, rng.randint(4, 6), lambda c: c.style != "whale")
        elif pattern in (ev.MULE_PASSTHROUGH, ev.ANOMALY):
            people = self._take(pool, 1, lambda c: c.style == "hodler")
        else:
            people = self._take(pool, 1, lambda c: c.style != "whale")
        if people is None:
            return None
        lo, hi = self.start + pre, self.end - span - MAX_JITTER_MS
        if hi <= lo:
            for c in people:
                c.in_incident = False
                pool.append(c)
            return None
        t0 = int(rng.uniform(lo, hi))
        if pattern == ev.PUMP_AND_DUMP:
            acc = rng.randint(8, 15) * MINUTE
            dump = rng.randint(6, 12) * MINUTE
            assets = [
                a for a in LOW_CAP_ASSETS if not self.market.pumped(a, t0 - HOUR, t0 + span + HOUR)
            ]
            asset = rng.choice(assets or list(LOW_CAP_ASSETS))
            self.market.pumps.append((asset, t0, t0 + acc, t0 + acc + dump, rng.uniform(1.5, 2.8)))
            params = {"asset": asset, "acc": acc, "dump": dump}
        wake = t0 - (pre - 5 * MINUTE if pattern == ev.ACCOUNT_TAKEOVER else 3 * MINUTE)
        post = (
            math.inf if pattern in (ev.ACCOUNT_TAKEOVER, ev.IMPOSSIBLE_TRAVEL) else t0 + span + HOUR
        )
        for c in people:
            c.blackouts.append((wake - 2 * HOUR, post))
        index = len(getattr(self, "incidents", []))
        return _Incident(index, pattern, wake, t0, people, params)

    def _run_incident(self, inc: _Incident) -> None:
        handler = {
            ev.ACCOUNT_TAKEOVER: self._account_takeover,
            ev.IMPOSSIBLE_TRAVEL: self._impossible_travel,
            ev.WITHDRAWAL_VELOCITY: self._withdrawal_velocity,
            ev.WASH_TRADING: self._wash_trading,
            ev.PUMP_AND_DUMP: self._pump_and_dump,
            ev.STRUCTURING: self._structuring,
            ev.MULE_PASSTHROUGH: self._mule_passthrough,
            ev.ANOMALY: self._anomaly,
        }[inc.pattern]
        handler(inc)
        if inc.pending == 0:  # nothing generated (should not happen): no label
            inc.done = True

    def _home_ctx(self, c: Customer) -> tuple[str, str, str]:
        return (c.ips[c.country][0], c.country, c.devices[0])

    def _account_takeover(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        v.balance = max(v.balance, rng.uniform(3_000, 40_000))
        home = self._home_ctx(v)
        t = inc.wake  # the victim's own session, hours before: establishes its habits
        self._event(t, v, ev.LOGIN, home)
        t = self._honest_trade(v, home, t + rng.randint(10_000, 60_000))
        self._event(t + rng.randint(5_000, 30_000), v, ev.LOGOUT, home)
        country = inc.params["country"]
        attacker = (self._ip(country), country, self._device())
        t = inc.t0
        self._event(t, v, ev.LOGIN, attacker, inc)
        kinds = rng.choice(
            ([ev.PASSWORD_RESET], [ev.API_KEY_CREATED], [ev.PASSWORD_RESET, ev.API_KEY_CREATED])
        )
        for kind in kinds:
            t += rng.randint(30_000, 240_000)
            self._event(t, v, kind, attacker, inc)
        asset = rng.choice(WITHDRAWAL_ASSETS)
        address = self._address(asset)
        t += rng.randint(60_000, 300_000)
        self._event(t, v, ev.WITHDRAWAL_ADDRESS_ADDED, attacker, inc, address=address)
        total = v.balance * rng.uniform(0.85, 1.0)
        parts = rng.choice((1, 2))
        for _ in range(parts):
            t += rng.randint(30_000, 240_000)
            self._event(
                t,
                v,
                ev.WITHDRAWAL,
                attacker,
                inc,
                address=address,
                **self._money(asset, total / parts, t),
            )
        v.balance -= total
        inc.description = (
            f"{v.id} (home {v.home}) logged in from a new device in {country}, "
            f"{' and '.join(_DONE[k] for k in kinds)}, added a withdrawal address "
            f"and withdrew {total:,.0f} USD to it"
        )

    def _impossible_travel(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        far = [
            c
            for c in sorted(ev.COUNTRY_LOCATIONS)
            if (ev.country_distance_km(v.home, c) or 0) >= IMPOSSIBLE_TRAVEL_MIN_KM
        ]
        country = rng.choice(far)
        home = self._home_ctx(v)
        t = inc.t0
        self._event(t, v, ev.LOGIN, home, inc)
        t1 = t + rng.randint(60_000, 4 * MINUTE)
        asset = rng.choice(v.assets)
        money = self._money(asset, v.typical_usd, t1)
        self._event(t1, v, ev.ORDER, home, side=ev.BUY, **money)
        self._event(t1 + rng.randint(10_000, 60_000), v, ev.LOGOUT, home)
        t2 = t + rng.randint(5 * MINUTE, 40 * MINUTE)
        away = (self._ip(country), country, self._device())
        self._event(t2, v, ev.LOGIN, away, inc)
        self._event(t2 + rng.randint(30_000, 200_000), v, ev.LOGOUT, away)
        dist = ev.country_distance_km(v.home, country) or 0
        inc.description = (
            f"{v.id} logged in from {v.home} and {round((t2 - t) / MINUTE)} minutes later from "
            f"{country}, {dist:,.0f} km away"
        )

    def _withdrawal_velocity(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        v.balance = max(v.balance, rng.uniform(8_000, 60_000))
        home = self._home_ctx(v)
        t = inc.t0 - rng.randint(20_000, 90_000)
        self._event(t, v, ev.LOGIN, home)
        t = inc.t0
        n = rng.randint(6, 12)
        window = rng.randint(3, 12) * MINUTE
        total = 0.0
        for i in range(n):
            ti = t + window * i // (n - 1) + rng.randint(0, 5_000)
            asset = rng.choice(WITHDRAWAL_ASSETS)
            usd = max(150.0, v.balance * rng.uniform(0.02, 0.07))
            address = rng.choice(v.addresses[self._family(asset)])
            self._event(
                ti, v, ev.WITHDRAWAL, home, inc, address=address, **self._money(asset, usd, ti)
            )
            total += usd
        v.balance -= total
        self._event(t + window + rng.randint(10_000, 60_000), v, ev.LOGOUT, home)
        inc.description = (
            f"{v.id} made {n} withdrawals ({total:,.0f} USD) in {window // MINUTE} minutes"
        )

    def _wash_trading(self, inc: _Incident) -> None:
        rng = self.rng
        a, b = inc.customers
        asset = rng.choice([x for x in a.assets if x in LIQUID_ASSETS] or ["ETH"])
        ca, cb = self._home_ctx(a), self._home_ctx(b)
        t = inc.t0
        self._event(t - rng.randint(30_000, 150_000), a, ev.LOGIN, ca)
        self._event(t - rng.randint(30_000, 150_000), b, ev.LOGIN, cb)
        rounds = rng.randint(5, 10)
        usd = rng.uniform(2_000, 50_000)
        for _ in range(rounds):
            for seller, sctx, buyer in ((a, ca, b), (b, cb, a)):
                t += rng.randint(15_000, 150_000)
                size = usd * rng.uniform(0.99, 1.01)
                price = self.market.price(asset, t) * rng.uniform(0.998, 1.002)
                money = self._money(asset, size, t)
                money["price_usd"] = float(f"{price:.6g}")
                self._event(t, seller, ev.ORDER, sctx, inc, side=ev.SELL, **money)
                self._trade(
                    t + rng.randint(100, 2_000),
                    seller,
                    sctx,
                    asset,
                    ev.SELL,
                    size,
                    buyer,
                    inc,
                    inc,
                    price=price,
                )
        inc.description = (
            f"{a.id} and {b.id} traded {asset} back and forth {rounds} times "
            f"(about {usd:,.0f} USD each way)"
        )

    def _pump_and_dump(self, inc: _Incident) -> None:
        rng = self.rng
        asset, acc, dump = inc.params["asset"], inc.params["acc"], inc.params["dump"]
        t0 = inc.t0
        for c in inc.customers:
            ctx = self._home_ctx(c)
            self._event(t0 - rng.randint(10_000, 3 * MINUTE), c, ev.LOGIN, ctx)
            bought = 0.0
            for _ in range(rng.randint(2, 4)):
                t = t0 + rng.randint(0, acc)
                usd = rng.uniform(3_000, 30_000)
                mine = self._trade(
                    t, c, ctx, asset, ev.BUY, usd, rng.choice(self.market_makers), inc
                )
                bought += mine[0].quantity or 0.0
            sells = rng.randint(1, 2)
            for _ in range(sells):
                t = t0 + acc + rng.randint(0, dump)
                price = self.market.price(asset, t)
                self._trade(
                    t,
                    c,
                    ctx,
                    asset,
                    ev.SELL,
                    bought / sells * price,
                    rng.choice(self.market_makers),
                    inc,
                )
        # honest buyers chasing the pump (not labelled)
        candidates = rng.sample(self.customers, 6)
        chasers = [c for c in candidates if not c.in_incident and not c.traveller][:2]
        for c in chasers:
            t = t0 + acc - rng.randint(0, 3 * MINUTE)
            if self._blocked(c, t) is None:
                ctx = (c.ips[c.country][0], c.country, c.devices[0])
                self._event(t - 20_000, c, ev.LOGIN, ctx)
                self._trade(
                    t,
                    c,
                    ctx,
                    asset,
                    ev.BUY,
                    rng.uniform(100, 2_000),
                    rng.choice(self.market_makers),
                )
        ids = ", ".join(c.id for c in inc.customers)
        inc.description = f"{ids} bought {asset} together for {acc // MINUTE} minutes, then sold"

    def _structuring(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        home = self._home_ctx(v)
        t = inc.t0
        self._event(t - rng.randint(20_000, 90_000), v, ev.LOGIN, home)
        n = rng.randint(5, 9)
        total = 0.0
        for _ in range(n):
            usd = rng.uniform(0.9, 0.995) * REPORTING_THRESHOLD_USD
            asset = rng.choice(("USD", "USDT"))
            money = {
                "asset": asset,
                "quantity": round(usd, 2),
                "price_usd": 1.0,
                "amount_usd": round(usd, 2),
            }
            address = None if asset == "USD" else self._address(asset)
            self._event(t, v, ev.DEPOSIT, home, inc, address=address, **money)
            total += usd
            t += rng.randint(3 * MINUTE, 7 * MINUTE)
        v.balance += total
        inc.description = (
            f"{v.id} made {n} deposits each just under {REPORTING_THRESHOLD_USD:,.0f} USD "
            f"({total:,.0f} USD in all)"
        )

    def _mule_passthrough(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        home = self._home_ctx(v)
        t = inc.t0
        self._event(t - rng.randint(20_000, 90_000), v, ev.LOGIN, home)
        cycles = rng.choice((1, 1, 2))
        moved = []
        for _ in range(cycles):
            asset = rng.choice(("USDT", "BTC", "ETH"))
            usd = rng.choice((rng.uniform(2_000, 8_500), rng.uniform(11_000, 45_000)))
            dep = self._event(
                t,
                v,
                ev.DEPOSIT,
                home,
                inc,
                address=self._address(asset),
                **self._money(asset, usd, t),
            )
            address = self._address(asset)
            t += rng.randint(60_000, 5 * MINUTE)
            self._event(t, v, ev.WITHDRAWAL_ADDRESS_ADDED, home, inc, address=address)
            t += rng.randint(60_000, 10 * MINUTE)
            out = (dep.quantity or 0.0) * rng.uniform(0.97, 0.995)
            price = self.market.price(asset, t)
            self._event(
                t,
                v,
                ev.WITHDRAWAL,
                home,
                inc,
                address=address,
                **self._money(asset, out * price, t),
            )
            moved.append(usd)
            t += rng.randint(2 * MINUTE, 6 * MINUTE)
        self._event(t, v, ev.LOGOUT, home)
        inc.description = (
            f"{v.id} received {' and '.join(f'{u:,.0f}' for u in moved)} USD and sent almost "
            "all of it on to a new address within minutes"
        )

    def _anomaly(self, inc: _Incident) -> None:
        rng, v = self.rng, inc.customers[0]
        home = self._home_ctx(v)
        t = inc.t0
        self._event(t - rng.randint(10_000, 60_000), v, ev.LOGIN, home)
        asset = rng.choice(
            [a for a in ALL_PRICES if a not in v.assets and a not in ("USD", "USDT")]
        )
        n = rng.randint(25, 60)
        span = rng.randint(40_000, 120_000)
        off = rng.choice((-1, 1)) * rng.uniform(0.25, 0.6)
        usd = max(v.typical_usd, 200.0) * rng.uniform(10, 50)
        for i in range(n):
            ti = t + span * i // n
            money = self._money(asset, usd * rng.uniform(0.8, 1.2), ti)
            money["price_usd"] = float(f"{money['price_usd'] * (1 + off):.6g}")
            money["amount_usd"] = round(money["quantity"] * money["price_usd"], 2)
            self._event(ti, v, ev.ORDER, home, inc, side=rng.choice(ev.SIDES), **money)
        self._event(t + span + rng.randint(5_000, 30_000), v, ev.LOGOUT, home)
        inc.description = (
            f"{v.id}, usually quiet, placed {n} orders for {asset} in {span // 1000} s at "
            f"{abs(off):.0%} off the market, about {usd / v.typical_usd:.0f}x its usual size"
        )

    # -- the run -------------------------------------------------------------------------------
    def stream(self) -> Iterator[tuple[int, Event]]:
        """(arrival time in ms, event) in arrival order."""
        rng = self.rng
        for customer in self.customers:
            if customer.rate > 0:
                first = self.start + int(rng.expovariate(customer.rate / 8) * 1000)
                if customer.first_wake is not None:
                    first = customer.first_wake
                if first < self.end:
                    self._push(first, 1, customer)
        for mm in self.market_makers:
            self._push(self.start + rng.randint(0, 5_000), 2, mm)
        heap, arrivals = self._heap, self._arrivals
        while heap:
            t, _, kind, obj = heapq.heappop(heap)
            while arrivals and arrivals[0][0] <= t:
                yield self._emit(heapq.heappop(arrivals))
            if kind == 0:
                event, incident = obj
                if t > self.end and incident is None:
                    continue  # the run ends: sessions still open are cut off
                delay = int(min(rng.expovariate(1 / 120), 2_000))
                if rng.random() < 0.003:
                    delay = rng.randint(2_000, MAX_JITTER_MS)
                self._n += 1
                heapq.heappush(arrivals, (t + delay, self._n, event, incident))
            elif kind == 1:
                customer = obj
                until = self._blocked(customer, t)
                if until is not None:
                    if until < self.end:
                        self._push(until + rng.randint(0, 10 * MINUTE), 1, customer)
                    continue
                produced = self._session(customer, t)
                if produced:
                    self._session_events += produced
                    gap = rng.expovariate(customer.rate / produced) * 1000 * self._pace(t)
                    # one session at a time, a pause of at least a minute between them
                    nxt = max(t + int(gap), customer.last_end + rng.randint(30_000, 5 * MINUTE))
                    if nxt < self.end:
                        self._push(nxt, 1, customer)
            elif kind == 2:
                if t < self.end:
                    self._market_maker(obj, t)
            elif kind == 3:
                self._run_incident(obj)
            else:
                self._large_withdrawal(obj, t)
        while arrivals:
            yield self._emit(heapq.heappop(arrivals))

    def _pace(self, t: int) -> float:
        """Feedback on session gaps so the customers' events keep to their share of the
        rate (sessions cannot overlap, so very active customers would fall behind)."""
        elapsed = (t - self.start) / 1000
        if elapsed < 120:
            return 1.0
        achieved = self._session_events / (0.8 * self.config.rate * elapsed)
        return min(4.0, max(0.1, achieved**2))

    def _emit(self, item: tuple[int, int, Event, _Incident | None]) -> tuple[int, Event]:
        arrival, _, event, incident = item
        self.emitted += 1
        self.counts[event.type] += 1
        if incident is not None:
            incident.pending -= 1
            if incident.pending == 0 and not incident.done:
                incident.done = True
                label = Label(
                    incident_id=f"inc-{self.run_id}-{incident.index + 1:04d}",
                    pattern=incident.pattern,
                    customer_ids=tuple(sorted(c.id for c in incident.customers)),
                    start_ts=format_ts(min(incident.times)),
                    end_ts=format_ts(max(incident.times)),
                    event_ids=tuple(
                        eid
                        for _, eid in sorted(zip(incident.times, incident.event_ids, strict=True))
                    ),
                    description=incident.description,
                )
                self.labels.append(label)
                if self._on_label is not None:
                    self._on_label(label)
        return arrival, event

    def events(self) -> Iterator[Event]:
        for _, event in self.stream():
            yield event

    def market_maker_summary(self) -> None:
        """Fill the market makers' look-alike entries with their trade counts."""
        for item in self.lookalikes:
            if item["kind"] == "market_maker":
                item["trades"] = self._mm_trades.get(item["customer_id"], 0)


_DONE = {ev.PASSWORD_RESET: "reset the password", ev.API_KEY_CREATED: "created an API key"}


@functools.cache
def _neighbours(home: str) -> list[str]:
    """Countries 200 to 1,000 km from ``home`` (plausible for an attacker's proxy)."""
    out = []
    for c in sorted(ev.COUNTRY_LOCATIONS):
        d = ev.country_distance_km(home, c)
        if c != home and d is not None and 200 <= d <= 1_000:
            out.append(c)
    return out


def generate(config: SimConfig) -> tuple[list[Event], list[Label], list[dict[str, Any]]]:
    """Run a whole simulation in memory: (events in arrival order, labels, look-alikes)."""
    sim = Simulation(config)
    events = list(sim.events())
    sim.market_maker_summary()
    return events, sim.labels, sim.lookalikes


# -- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--hours", type=float, help="simulated hours of event time (default 4)")
    span.add_argument("--events", type=int, help="about this many events (duration = N / rate)")
    parser.add_argument(
        "--rate", type=float, default=20.0, help="background events per second (default 20)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--incident-rate",
        type=float,
        default=4.0,
        help="injected incidents per simulated hour (default 4; at least one of each pattern)",
    )
    parser.add_argument(
        "--start", default=None, help=f"event time of the start (default {DEFAULT_START})"
    )
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="write events as JSON lines ('-' for stdout)")
    out.add_argument("--ledger", help=f"append events to this ledger (e.g. {ev.INPUT_LEDGER})")
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions when --ledger is created (8)"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="entries per ledger batch")
    parser.add_argument("--labels", type=Path, required=True, help="write incident labels here")
    parser.add_argument(
        "--lookalikes", type=Path, help="write the honest look-alikes (not incidents) here"
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="start now and emit each event when the wall clock reaches its time",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    from streamledger.cli.main import UsageError

    if args.rate <= 0:
        raise UsageError("--rate must be positive")
    if args.customers < 50:
        raise UsageError("--customers must be at least 50")
    if args.events is not None:
        if args.events < 1:
            raise UsageError("--events must be at least 1")
        duration = args.events / args.rate
    else:
        hours = 4.0 if args.hours is None else args.hours
        if hours <= 0:
            raise UsageError("--hours must be positive")
        duration = hours * 3600
    if args.realtime:
        start = (time.time_ns() // 1_000_000) if args.start is None else parse_ts(args.start)
    else:
        start = parse_ts(args.start or DEFAULT_START)
    return SimConfig(
        customers=args.customers,
        duration_s=duration,
        rate=args.rate,
        seed=args.seed,
        incident_rate=max(0.0, args.incident_rate),
        start_ms=start,
    )


class _Progress:
    def __init__(self, sim: Simulation, quiet: bool) -> None:
        self.sim, self.quiet = sim, quiet
        self.began = self.last = time.monotonic()

    def tick(self, arrival: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self.last < 2.0):
            return
        self.last = now
        sim = self.sim
        done = min(1.0, (arrival - sim.start) / max(1, sim.end - sim.start))
        rate = sim.emitted / max(1e-9, now - self.began)
        print(
            f"simulate: {sim.emitted:,} events, {len(sim.labels)} incidents, "
            f"{done:.0%} of event time, {rate:,.0f} events/s",
            file=sys.stderr,
            flush=True,
        )


def main(args: argparse.Namespace) -> int:
    from streamledger.cli.main import UsageError

    config = config_from_args(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    args.labels.parent.mkdir(parents=True, exist_ok=True)
    with open(args.labels, "w", encoding="utf-8") as labels_out:

        def on_label(label: Label) -> None:
            labels_out.write(label.to_json().decode() + "\n")
            labels_out.flush()

        def warn(message: str) -> None:
            print(message, file=sys.stderr)

        sim = Simulation(config, on_label=on_label, warn=warn)
        progress = _Progress(sim, args.quiet)
        stream = _paced(sim.stream()) if args.realtime else sim.stream()
        if args.out is not None:
            _to_file(stream, args.out, progress, args.realtime)
        else:
            _to_ledger(stream, args, progress)
    sim.market_maker_summary()
    if args.lookalikes is not None:
        with open(args.lookalikes, "w", encoding="utf-8") as out:
            for item in sim.lookalikes:
                out.write(ev._dumps(item).decode() + "\n")
    if not args.quiet:
        per_pattern: dict[str, int] = {}
        for label in sim.labels:
            per_pattern[label.pattern] = per_pattern.get(label.pattern, 0) + 1
        shown = ", ".join(f"{p} {n}" for p, n in sorted(per_pattern.items())) or "none"
        print(
            f"simulate: wrote {sim.emitted:,} events from {format_ts(sim.start)} to "
            f"{format_ts(sim.end)}; {len(sim.labels)} incidents ({shown}) to {args.labels}",
            file=sys.stderr,
        )
    return 0


def _paced(stream: Iterator[tuple[int, Event]]) -> Iterator[tuple[int, Event]]:
    for arrival, event in stream:
        wait = arrival / 1000 - time.time()
        if wait > 0:
            time.sleep(wait)
        yield arrival, event


def _to_file(
    stream: Iterator[tuple[int, Event]], path: Path, progress: _Progress, realtime: bool
) -> None:
    out: IO[bytes]
    if str(path) == "-":
        out = sys.stdout.buffer
        close = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = open(path, "wb")  # noqa: SIM115 (closed below, or stdout kept open)
        close = True
    try:
        for arrival, event in stream:
            out.write(event.to_json() + b"\n")
            if realtime:
                out.flush()
            progress.tick(arrival)
        out.flush()
    finally:
        if close:
            out.close()


def _to_ledger(
    stream: Iterator[tuple[int, Event]], args: argparse.Namespace, progress: _Progress
) -> None:
    from streamledger.cli.commands import open_backend
    from streamledger.fraud.pipeline import open_or_create
    from streamledger.ledger import AppendItem

    backend = open_backend(args, create=True)
    try:
        ledger = open_or_create(backend, args.ledger, args.partitions)

        def items() -> Iterator[AppendItem]:
            for arrival, event in stream:
                progress.tick(arrival)
                yield AppendItem(event.to_json(), event.customer_id.encode(), ev.CONTENT_TYPE)

        if args.realtime:  # small batches, appended as they come due
            batch: list[AppendItem] = []
            last = time.monotonic()
            for item in items():
                batch.append(item)
                if len(batch) >= args.batch_size or time.monotonic() - last > 0.1:
                    ledger.append_many(batch)
                    batch, last = [], time.monotonic()
            if batch:
                ledger.append_many(batch)
        else:
            for _ in ledger.append_stream(items(), batch_size=args.batch_size):
                pass
    finally:
        backend.close()
