"""The fraud data contract: input events of ``logs-customer-trading`` and alerts of
``fraud-alert-events`` (see docs/fraud.md). Pure: no I/O, no clock.

>>> e = parse_event(b'{"event_id": "e1", "ts": "2024-05-01T12:00:00.250Z", '
...                 b'"customer_id": "c1", "type": "login", "ip": "10.0.0.1", '
...                 b'"country": "DE", "device_id": "d1", "extra": 1}')
>>> e.ts_ms, e.type, e.asset
(1714564800250, 'login', None)
>>> parse_event(e.to_json()) == e
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streamledger.errors import FormatError

# -- names -------------------------------------------------------------------------------
INPUT_LEDGER = "logs-customer-trading"
SUSPICIOUS_LEDGER = "suspicious-events"
ALERTS_LEDGER = "fraud-alert-events"
CONTENT_TYPE = "application/json"

LOGIN = "login"
LOGOUT = "logout"
PASSWORD_RESET = "password_reset"
API_KEY_CREATED = "api_key_created"
WITHDRAWAL_ADDRESS_ADDED = "withdrawal_address_added"
DEPOSIT = "deposit"
WITHDRAWAL = "withdrawal"
ORDER = "order"
TRADE = "trade"
EVENT_TYPES: tuple[str, ...] = (
    LOGIN,
    LOGOUT,
    PASSWORD_RESET,
    API_KEY_CREATED,
    WITHDRAWAL_ADDRESS_ADDED,
    DEPOSIT,
    WITHDRAWAL,
    ORDER,
    TRADE,
)

BUY = "buy"
SELL = "sell"
SIDES: tuple[str, ...] = (BUY, SELL)

ACCOUNT_TAKEOVER = "account_takeover"
IMPOSSIBLE_TRAVEL = "impossible_travel"
WITHDRAWAL_VELOCITY = "withdrawal_velocity"
WASH_TRADING = "wash_trading"
PUMP_AND_DUMP = "pump_and_dump"
STRUCTURING = "structuring"
MULE_PASSTHROUGH = "mule_passthrough"
ANOMALY = "anomaly"
PATTERNS: tuple[str, ...] = (
    ACCOUNT_TAKEOVER,
    IMPOSSIBLE_TRAVEL,
    WITHDRAWAL_VELOCITY,
    WASH_TRADING,
    PUMP_AND_DUMP,
    STRUCTURING,
    MULE_PASSTHROUGH,
    ANOMALY,
)
#: Not a fraud pattern: the pipeline's alert for an input entry that failed verification.
#: Kept out of PATTERNS (and out of precision/recall), but a valid Alert.pattern.
INTEGRITY = "integrity"
ALERT_PATTERNS: tuple[str, ...] = (*PATTERNS, INTEGRITY)

LOW = "low"
MEDIUM = "medium"
HIGH = "high"
CRITICAL = "critical"
SEVERITIES: tuple[str, ...] = (LOW, MEDIUM, HIGH, CRITICAL)

#: Largest accepted event payload.
MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 200

# Types that must carry these fields (non-null).
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    LOGIN: ("ip", "country", "device_id"),
    DEPOSIT: ("asset", "amount_usd"),
    WITHDRAWAL: ("asset", "amount_usd", "address"),
    WITHDRAWAL_ADDRESS_ADDED: ("address",),
    ORDER: ("asset", "side", "quantity", "price_usd"),
    TRADE: ("asset", "side", "quantity", "price_usd"),
}

#: ISO 3166-1 alpha-2, officially assigned codes.
ISO_COUNTRIES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 (a compact table of codes)
)

#: Approximate (lat, lon) of a main city, for travel distance. Countries not listed have
#: no known location: ``country_distance_km`` returns None for them.
COUNTRY_LOCATIONS: dict[str, tuple[float, float]] = {
    "AE": (25.2, 55.3), "AR": (-34.6, -58.4), "AT": (48.2, 16.4), "AU": (-33.9, 151.2),
    "BE": (50.8, 4.4), "BG": (42.7, 23.3), "BR": (-23.5, -46.6), "CA": (43.7, -79.4),
    "CH": (47.4, 8.5), "CL": (-33.4, -70.7), "CN": (31.2, 121.5), "CO": (4.7, -74.1),
    "CZ": (50.1, 14.4), "DE": (52.5, 13.4), "DK": (55.7, 12.6), "EG": (30.0, 31.2),
    "ES": (40.4, -3.7), "FI": (60.2, 24.9), "FR": (48.9, 2.4), "GB": (51.5, -0.1),
    "GR": (38.0, 23.7), "HK": (22.3, 114.2), "HU": (47.5, 19.0), "ID": (-6.2, 106.8),
    "IE": (53.3, -6.3), "IL": (32.1, 34.8), "IN": (19.1, 72.9), "IT": (41.9, 12.5),
    "JP": (35.7, 139.7), "KE": (-1.3, 36.8), "KR": (37.6, 127.0), "MX": (19.4, -99.1),
    "MY": (3.1, 101.7), "NG": (6.5, 3.4), "NL": (52.4, 4.9), "NO": (59.9, 10.8),
    "NZ": (-36.8, 174.8), "PE": (-12.0, -77.0), "PH": (14.6, 121.0), "PK": (24.9, 67.0),
    "PL": (52.2, 21.0), "PT": (38.7, -9.1), "RO": (44.4, 26.1), "RU": (55.8, 37.6),
    "SA": (24.7, 46.7), "SE": (59.3, 18.1), "SG": (1.35, 103.8), "TH": (13.8, 100.5),
    "TR": (41.0, 29.0), "TW": (25.0, 121.5), "UA": (50.5, 30.5), "US": (40.7, -74.0),
    "VN": (10.8, 106.7), "ZA": (-26.2, 28.0),
}  # fmt: skip

_TS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})(Z|\+00:00)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- errors ------------------------------------------------------------------------------
class MalformedEvent(FormatError):
    """An input event (or alert) that does not follow the data contract.

    ``code`` is a stable machine-readable class (one of the ``REJECT_*`` constants),
    ``field`` the offending field or None, ``str(exc)`` one sentence a person understands.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    @property
    def reason(self) -> str:
        return str(self)


REJECT_TOO_LARGE = "too_large"
REJECT_NOT_UTF8 = "not_utf8"
REJECT_NOT_JSON = "not_json"
REJECT_NOT_OBJECT = "not_object"
REJECT_MISSING_FIELD = "missing_field"
REJECT_WRONG_TYPE = "wrong_type"
REJECT_BAD_VALUE = "bad_value"
REJECT_BAD_TS = "bad_ts"
REJECT_BAD_EVENT_TYPE = "bad_event_type"
REJECT_BAD_COUNTRY = "bad_country"
REJECT_CODES: tuple[str, ...] = (
    REJECT_TOO_LARGE,
    REJECT_NOT_UTF8,
    REJECT_NOT_JSON,
    REJECT_NOT_OBJECT,
    REJECT_MISSING_FIELD,
    REJECT_WRONG_TYPE,
    REJECT_BAD_VALUE,
    REJECT_BAD_TS,
    REJECT_BAD_EVENT_TYPE,
    REJECT_BAD_COUNTRY,
)


# -- time --------------------------------------------------------------------------------
def parse_ts(value: Any, field_name: str = "ts") -> int:
    """RFC 3339 UTC with milliseconds (``2024-05-01T12:00:00.250Z``) -> epoch milliseconds."""
    return _parse_ts(value, field_name)[0]


#: Epoch ms of the start of an hour, by the canonical text's prefix ``YYYY-MM-DDTHH:``;
#: filled by the strict parser, so a prefix found here is a valid, canonical one.
_HOURS: dict[str, int] = {}
_MAX_HOURS = 100_000


def _parse_ts(value: Any, field_name: str) -> tuple[int, str]:
    """``(epoch ms, canonical text)``. Fast path: the canonical form of an hour already
    seen (plain ASCII digits, checked); anything else goes through the strict parser."""
    if type(value) is str and len(value) == 24 and value.isascii():
        base = _HOURS.get(value[:14])
        if (
            base is not None
            and value[16] == ":"
            and value[19] == "."
            and value[23] == "Z"
            and value[14:16].isdigit()
            and value[17:19].isdigit()
            and value[20:23].isdigit()
        ):
            minute, second = int(value[14:16]), int(value[17:19])
            if minute < 60 and second < 60:
                return base + (minute * 60 + second) * 1000 + int(value[20:23]), value
    ms = _parse_ts_strict(value, field_name)
    text = format_ts(ms)
    if text == value and value.isascii():  # canonical: remember its hour
        if len(_HOURS) >= _MAX_HOURS:
            _HOURS.clear()
        _HOURS[value[:14]] = ms - ms % 3_600_000
    return ms, text


def _parse_ts_strict(value: Any, field_name: str) -> int:
    if not isinstance(value, str):
        raise MalformedEvent(
            REJECT_BAD_TS,
            f"{field_name} must be an RFC 3339 UTC string, got {_kind(value)}",
            field_name,
        )
    m = _TS_RE.match(value)
    if m is None:
        raise MalformedEvent(
            REJECT_BAD_TS,
            f"{field_name} {value[:40]!r} is not RFC 3339 UTC with milliseconds "
            "(like 2024-05-01T12:00:00.250Z)",
            field_name,
        )
    y, mo, d, h, mi, s, ms = (int(g) for g in m.groups()[:7])
    try:
        moment = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError as exc:
        raise MalformedEvent(
            REJECT_BAD_TS, f"{field_name} {value!r} is not a real date or time: {exc}", field_name
        ) from None
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + ms


def format_ts(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC with milliseconds (the canonical form)."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_second_text(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- geography ---------------------------------------------------------------------------
def country_distance_km(a: str, b: str) -> float | None:
    """Great-circle distance between the main cities of two countries; 0 for the same
    country; None when either country's location is not known."""
    if a == b:
        return 0.0
    pa, pb = COUNTRY_LOCATIONS.get(a), COUNTRY_LOCATIONS.get(b)
    if pa is None or pb is None:
        return None
    lat1, lon1, lat2, lon2 = map(math.radians, (*pa, *pb))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


# -- input events ------------------------------------------------------------------------
#: Field order of the canonical JSON of an event.
EVENT_FIELDS: tuple[str, ...] = (
    "event_id",
    "ts",
    "customer_id",
    "type",
    "ip",
    "country",
    "device_id",
    "asset",
    "side",
    "quantity",
    "price_usd",
    "amount_usd",
    "address",
    "counterparty_id",
)


@dataclass(frozen=True)
class Event:
    """One customer event. ``ts`` is the canonical RFC 3339 text, ``ts_ms`` the same
    instant in epoch milliseconds. Optional fields are None when absent or null."""

    event_id: str
    ts: str
    ts_ms: int
    customer_id: str
    type: str
    ip: str | None = None
    country: str | None = None
    device_id: str | None = None
    asset: str | None = None
    side: str | None = None
    quantity: float | None = None
    price_usd: float | None = None
    amount_usd: float | None = None
    address: str | None = None
    counterparty_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The contract's fields in canonical order (no ``ts_ms``), nulls included."""
        return {name: getattr(self, name) for name in EVENT_FIELDS}

    def to_json(self) -> bytes:
        """Canonical UTF-8 JSON: fixed field order, compact, nulls written."""
        return _dumps(self.to_dict())

    @classmethod
    def make(
        cls, *, event_id: str, ts_ms: int, customer_id: str, type: str, **fields: Any
    ) -> Event:
        """Build an event from epoch milliseconds, validated like ``parse_event``."""
        obj = {"event_id": event_id, "ts": format_ts(ts_ms), "customer_id": customer_id,
               "type": type, **fields}  # fmt: skip
        return event_from_dict(obj)


def parse_event(data: bytes | str) -> Event:
    """Parse one input event. Raises ``MalformedEvent`` (a ``FormatError``) whose message
    says what is wrong and whose ``code`` classifies it; unknown extra fields are ignored."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_EVENT_BYTES:
        raise MalformedEvent(
            REJECT_TOO_LARGE, f"event is {len(data)} bytes, more than the {MAX_EVENT_BYTES} allowed"
        )
    try:
        text = (data if type(data) is bytes else bytes(data)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(
            REJECT_NOT_UTF8, f"event is not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        # what json.loads(text, parse_constant=...) does, without a new decoder per call
        obj = (
            json.loads(text, parse_constant=_reject_constant)
            if text.startswith("\ufeff")
            else _DECODER.decode(text)
        )
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(REJECT_NOT_JSON, f"event is not valid JSON: {exc}") from None
    return event_from_dict(obj)


def event_from_dict(obj: Any) -> Event:
    """Validate a decoded JSON value as an event (see ``parse_event``)."""
    if not isinstance(obj, dict):
        raise MalformedEvent(REJECT_NOT_OBJECT, f"event must be a JSON object, got {_kind(obj)}")
    event_id = _req_id(obj, "event_id")
    ts_ms, ts = _parse_ts(_required(obj, "ts"), "ts")
    customer_id = _req_id(obj, "customer_id")
    etype = _required(obj, "type")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        raise MalformedEvent(
            REJECT_BAD_EVENT_TYPE,
            f"type {_show(etype)} is not one of {', '.join(EVENT_TYPES)}",
            "type",
        )
    country = _str_or_none(obj, "country")
    if country is not None and country not in ISO_COUNTRIES:
        raise MalformedEvent(
            REJECT_BAD_COUNTRY,
            f"country {country[:20]!r} is not an ISO 3166-1 alpha-2 code (like 'DE', upper case)",
            "country",
        )
    side = _str_or_none(obj, "side")
    if side is not None and side not in SIDES:
        raise MalformedEvent(
            REJECT_BAD_VALUE, f"side {side[:20]!r} must be 'buy', 'sell' or null", "side"
        )
    asset = _str_or_none(obj, "asset")
    if asset is not None and not (1 <= len(asset) <= 20):
        raise MalformedEvent(REJECT_BAD_VALUE, "asset must be 1 to 20 characters", "asset")
    # (the same order of checks as the fields' order: the first bad field is reported)
    fields = {
        "event_id": event_id,
        "ts": ts,
        "ts_ms": ts_ms,
        "customer_id": customer_id,
        "type": etype,
        "ip": _str_or_none(obj, "ip"),
        "country": country,
        "device_id": _str_or_none(obj, "device_id"),
        "asset": asset,
        "side": side,
        "quantity": _num_or_none(obj, "quantity"),
        "price_usd": _num_or_none(obj, "price_usd"),
        "amount_usd": _num_or_none(obj, "amount_usd"),
        "address": _str_or_none(obj, "address"),
        "counterparty_id": _str_or_none(obj, "counterparty_id"),
    }
    # Event(**fields) for values already validated, without the frozen dataclass's
    # per-field object.__setattr__ (the same instance: equal, hashable, picklable)
    event = object.__new__(Event)
    event.__dict__.update(fields)
    for name in REQUIRED_BY_TYPE.get(etype, ()):
        if fields[name] is None:
            raise MalformedEvent(
                REJECT_MISSING_FIELD, f"a {etype} event needs a non-null {name}", name
            )
    if etype in (ORDER, TRADE) and not (event.quantity and event.quantity > 0):
        raise MalformedEvent(
            REJECT_BAD_VALUE, f"a {etype} needs a quantity greater than 0", "quantity"
        )
    if event.counterparty_id is not None and event.counterparty_id == customer_id:
        raise MalformedEvent(
            REJECT_BAD_VALUE, "counterparty_id must not be the customer itself", "counterparty_id"
        )
    return event


# -- alerts ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """One input entry an alert rests on: where it is in the input ledger."""

    ledger: str
    partition: int
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "partition": self.partition, "seq": self.seq}


@dataclass(frozen=True)
class Alert:
    """One alert of ``fraud-alert-events``. Times are canonical RFC 3339 strings (as in
    the JSON); ``first_ts_ms``/``last_ts_ms``/``detected_at_ms`` give epoch ms.
    ``customer_ids`` is sorted and unique. Build new ones with ``Alert.build``."""

    alert_id: str
    pattern: str
    customer_ids: tuple[str, ...]
    first_ts: str
    last_ts: str
    detected_at: str
    severity: str
    score: float
    reason: str
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Normalise and validate, so an Alert in memory always serialises to a valid one.
        if self.pattern not in ALERT_PATTERNS:
            raise MalformedEvent(
                REJECT_BAD_VALUE,
                f"pattern {self.pattern!r} is not one of {', '.join(ALERT_PATTERNS)}",
                "pattern",
            )
        if self.severity not in SEVERITIES:
            raise MalformedEvent(
                REJECT_BAD_VALUE,
                f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}",
                "severity",
            )
        ids = tuple(sorted(set(self.customer_ids)))
        if not ids or not all(isinstance(c, str) and c for c in ids):
            raise MalformedEvent(
                REJECT_BAD_VALUE, "customer_ids must be a non-empty list of ids", "customer_ids"
            )
        object.__setattr__(self, "customer_ids", ids)
        for name in ("first_ts", "last_ts", "detected_at"):
            object.__setattr__(self, name, format_ts(parse_ts(getattr(self, name), name)))
        if self.last_ts_ms < self.first_ts_ms:
            raise MalformedEvent(REJECT_BAD_VALUE, "last_ts is before first_ts", "last_ts")
        score = float(self.score)
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise MalformedEvent(REJECT_BAD_VALUE, f"score {score} is not in [0, 1]", "score")
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "evidence", tuple(self.evidence))

    @property
    def first_ts_ms(self) -> int:
        return parse_ts(self.first_ts, "first_ts")

    @property
    def last_ts_ms(self) -> int:
        return parse_ts(self.last_ts, "last_ts")

    @property
    def detected_at_ms(self) -> int:
        return parse_ts(self.detected_at, "detected_at")

    @classmethod
    def build(
        cls,
        *,
        pattern: str,
        customer_ids: list[str] | tuple[str, ...],
        anchor: str | int,
        first_ts_ms: int,
        last_ts_ms: int,
        detected_at_ms: int,
        severity: str,
        score: float,
        reason: str,
        evidence: list[Evidence] | tuple[Evidence, ...] = (),
    ) -> Alert:
        """A new alert whose ``alert_id`` is ``make_alert_id(pattern, customer_ids, anchor)``."""
        return cls(
            alert_id=make_alert_id(pattern, customer_ids, anchor),
            pattern=pattern,
            customer_ids=tuple(customer_ids),
            first_ts=format_ts(first_ts_ms),
            last_ts=format_ts(last_ts_ms),
            detected_at=format_ts(detected_at_ms),
            severity=severity,
            score=score,
            reason=reason,
            evidence=tuple(evidence),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "pattern": self.pattern,
            "customer_ids": list(self.customer_ids),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "detected_at": self.detected_at,
            "severity": self.severity,
            "score": self.score,
            "reason": self.reason,
            "evidence": [e.to_dict() for e in self.evidence],
        }

    def to_json(self) -> bytes:
        """Canonical UTF-8 JSON in the contract's field order."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Alert:
        if not isinstance(obj, dict):
            raise MalformedEvent(
                REJECT_NOT_OBJECT, f"alert must be a JSON object, got {_kind(obj)}"
            )
        ids = _required(obj, "customer_ids")
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise MalformedEvent(
                REJECT_WRONG_TYPE, "customer_ids must be a list of strings", "customer_ids"
            )
        raw_evidence = obj.get("evidence") or []
        if not isinstance(raw_evidence, list):
            raise MalformedEvent(REJECT_WRONG_TYPE, "evidence must be a list", "evidence")
        evidence = []
        for item in raw_evidence:
            if not isinstance(item, dict):
                raise MalformedEvent(
                    REJECT_WRONG_TYPE, "each evidence item must be an object", "evidence"
                )
            ledger = item.get("ledger")
            part, seq = item.get("partition"), item.get("seq")
            if not isinstance(ledger, str) or not _is_int(part) or not _is_int(seq):
                raise MalformedEvent(
                    REJECT_WRONG_TYPE,
                    "evidence items need ledger (string), partition and seq (integers)",
                    "evidence",
                )
            evidence.append(Evidence(ledger, part, seq))
        score = _required(obj, "score")
        if not _is_num(score):
            raise MalformedEvent(REJECT_WRONG_TYPE, "score must be a number", "score")
        strings = {}
        for name in ("alert_id", "pattern", "first_ts", "last_ts", "detected_at", "severity",
                     "reason"):  # fmt: skip
            value = _required(obj, name)
            if not isinstance(value, str):
                raise MalformedEvent(
                    REJECT_WRONG_TYPE, f"{name} must be a string, got {_kind(value)}", name
                )
            strings[name] = value
        return cls(customer_ids=tuple(ids), score=score, evidence=tuple(evidence), **strings)

    @classmethod
    def from_json(cls, data: bytes | str) -> Alert:
        """Parse an alert; raises ``MalformedEvent`` like ``parse_event``."""
        try:
            obj = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEvent(REJECT_NOT_JSON, f"alert is not valid JSON: {exc}") from None
        return cls.from_dict(obj)


def make_alert_id(
    pattern: str, customer_ids: list[str] | tuple[str, ...], anchor: str | int
) -> str:
    """Deterministic alert id: the same pattern, the same customers (any order, duplicates
    ignored) and the same incident anchor (e.g. the event_id or the event-time window start
    that opened the incident) give the same id, so an incident seen again dedups."""
    ids = ",".join(sorted(set(customer_ids)))
    digest = hashlib.sha256(f"{pattern}\n{ids}\n{anchor}".encode()).hexdigest()
    return f"alert-{digest[:32]}"


# -- helpers -----------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip


def _show(value: Any) -> str:
    return repr(value[:30]) if isinstance(value, str) else _kind(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _required(obj: dict[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise MalformedEvent(REJECT_MISSING_FIELD, f"field {name!r} is missing or null", name)
    return obj[name]


def _req_id(obj: dict[str, Any], name: str) -> str:
    value = _required(obj, name)
    if not isinstance(value, str):
        raise MalformedEvent(
            REJECT_WRONG_TYPE, f"{name} must be a string, got {_kind(value)}", name
        )
    if not value.strip() or len(value) > MAX_ID_CHARS:
        raise MalformedEvent(
            REJECT_BAD_VALUE, f"{name} must be 1 to {MAX_ID_CHARS} non-blank characters", name
        )
    return value


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(
            REJECT_WRONG_TYPE, f"{name} must be a string or null, got {_kind(value)}", name
        )
    if not value or len(value) > MAX_ID_CHARS:
        raise MalformedEvent(
            REJECT_BAD_VALUE, f"{name} must be 1 to {MAX_ID_CHARS} characters or null", name
        )
    return value


def _str_or_none(obj: dict[str, Any], name: str) -> str | None:
    """``_opt_str`` with a fast path for the usual case (same result, same errors)."""
    value = obj.get(name)
    if value is None or (type(value) is str and 0 < len(value) <= MAX_ID_CHARS):
        return value
    return _opt_str(obj, name)


def _num_or_none(obj: dict[str, Any], name: str) -> float | None:
    """``_opt_num`` with a fast path for the usual case (same result, same errors)."""
    value = obj.get(name)
    if value is None or (type(value) is float and 0.0 <= value <= _FLOAT_MAX):
        return value
    return _opt_num(obj, name)


_FLOAT_MAX = sys.float_info.max


def _opt_num(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if not _is_num(value):
        raise MalformedEvent(
            REJECT_WRONG_TYPE, f"{name} must be a number or null, got {_kind(value)}", name
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise MalformedEvent(
            REJECT_BAD_VALUE, f"{name} must be a finite number >= 0, got {str(value)[:24]}", name
        )
    return number


# -- incident labels (simulator ground truth, never part of the events) ------------------
@dataclass(frozen=True)
class Label:
    """One injected incident: written by ``fraud simulate --labels``, read by ``evaluate``.
    ``customer_ids`` sorted; ``start_ts``/``end_ts`` the event times of its first and last
    event; ``event_ids`` the incident's own events (context events are not listed)."""

    incident_id: str
    pattern: str
    customer_ids: tuple[str, ...]
    start_ts: str
    end_ts: str
    event_ids: tuple[str, ...]
    description: str = ""

    @property
    def start_ts_ms(self) -> int:
        return parse_ts(self.start_ts, "start_ts")

    @property
    def end_ts_ms(self) -> int:
        return parse_ts(self.end_ts, "end_ts")

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "pattern": self.pattern,
            "customer_ids": list(self.customer_ids),
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "event_ids": list(self.event_ids),
            "description": self.description,
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> Label:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEvent(REJECT_NOT_JSON, f"label is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise MalformedEvent(REJECT_NOT_OBJECT, "label must be a JSON object")
        pattern = _required(obj, "pattern")
        if pattern not in PATTERNS:
            raise MalformedEvent(
                REJECT_BAD_VALUE, f"label pattern {_show(pattern)} is not a pattern", "pattern"
            )
        ids, event_ids = _required(obj, "customer_ids"), obj.get("event_ids") or []
        for name, value in (("customer_ids", ids), ("event_ids", event_ids)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise MalformedEvent(REJECT_WRONG_TYPE, f"{name} must be a list of strings", name)
        start = format_ts(parse_ts(_required(obj, "start_ts"), "start_ts"))
        end = format_ts(parse_ts(_required(obj, "end_ts"), "end_ts"))
        return cls(
            incident_id=str(_required(obj, "incident_id")),
            pattern=pattern,
            customer_ids=tuple(sorted(set(ids))),
            start_ts=start,
            end_ts=end,
            event_ids=tuple(event_ids),
            description=str(obj.get("description") or ""),
        )
