"""The fraud data contract: events and alerts round trip; malformed events say why."""

from __future__ import annotations

import json

import pytest

from streamledger.errors import FormatError
from streamledger.fraud import events as ev
from streamledger.fraud.events import (
    Alert,
    Event,
    Evidence,
    MalformedEvent,
    format_ts,
    make_alert_id,
    parse_event,
    parse_ts,
)

BASE = {
    "event_id": "e-1",
    "ts": "2024-05-01T12:00:00.250Z",
    "customer_id": "c-1",
    "type": "withdrawal",
    "ip": "203.0.113.7",
    "country": "DE",
    "device_id": "dev-1",
    "asset": "BTC",
    "side": None,
    "quantity": 0.5,
    "price_usd": 60000,
    "amount_usd": 30000.0,
    "address": "bc1qexample",
    "counterparty_id": None,
}


def raw(**changes: object) -> bytes:
    obj = {**BASE, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP}).encode()


_DROP = object()


def test_parse_and_canonical_round_trip() -> None:
    event = parse_event(raw(extra_field={"ignored": True}))
    assert event.ts_ms == 1714564800250
    assert event.price_usd == 60000.0 and isinstance(event.price_usd, float)
    assert parse_event(event.to_json()) == event
    assert list(json.loads(event.to_json())) == list(ev.EVENT_FIELDS)
    assert "extra_field" not in event.to_dict()
    # str input and +00:00 offset are accepted; output is canonical Z form
    same = parse_event(raw(ts="2024-05-01T12:00:00.250+00:00").decode())
    assert same.ts == "2024-05-01T12:00:00.250Z" and same == event


def test_optional_fields_may_be_absent() -> None:
    event = parse_event(
        json.dumps({"event_id": "e", "ts": BASE["ts"], "customer_id": "c", "type": "logout"})
    )
    assert event.ip is None and event.asset is None and event.counterparty_id is None


def test_make_builds_valid_events() -> None:
    event = Event.make(event_id="x", ts_ms=0, customer_id="c", type="logout", country="US")
    assert event.ts == "1970-01-01T00:00:00.000Z"
    with pytest.raises(MalformedEvent):
        Event.make(event_id="x", ts_ms=0, customer_id="c", type="nope")


MALFORMED = [
    (b"\xff\xfe{}", ev.REJECT_NOT_UTF8, None, "UTF-8"),
    (b"{not json", ev.REJECT_NOT_JSON, None, "JSON"),
    (b'{"amount_usd": NaN}', ev.REJECT_NOT_JSON, None, "NaN"),
    (b"[1, 2]", ev.REJECT_NOT_OBJECT, None, "object"),
    (b" " * (ev.MAX_EVENT_BYTES + 1), ev.REJECT_TOO_LARGE, None, "bytes"),
    (raw(event_id=_DROP), ev.REJECT_MISSING_FIELD, "event_id", "event_id"),
    (raw(customer_id=None), ev.REJECT_MISSING_FIELD, "customer_id", "customer_id"),
    (raw(event_id=17), ev.REJECT_WRONG_TYPE, "event_id", "string"),
    (raw(event_id="  "), ev.REJECT_BAD_VALUE, "event_id", "non-blank"),
    (raw(ts="2024-05-01 12:00:00"), ev.REJECT_BAD_TS, "ts", "RFC 3339"),
    (raw(ts="2024-05-01T12:00:00Z"), ev.REJECT_BAD_TS, "ts", "milliseconds"),
    (raw(ts="2024-05-01T14:00:00.000+02:00"), ev.REJECT_BAD_TS, "ts", "UTC"),
    (raw(ts="2024-02-30T12:00:00.000Z"), ev.REJECT_BAD_TS, "ts", "real date"),
    (raw(ts=1714564800250), ev.REJECT_BAD_TS, "ts", "string"),
    (raw(type="transfer"), ev.REJECT_BAD_EVENT_TYPE, "type", "not one of"),
    (raw(type=None), ev.REJECT_MISSING_FIELD, "type", "type"),
    (raw(country="Germany"), ev.REJECT_BAD_COUNTRY, "country", "ISO 3166"),
    (raw(country="de"), ev.REJECT_BAD_COUNTRY, "country", "alpha-2"),
    (raw(country="XX"), ev.REJECT_BAD_COUNTRY, "country", "alpha-2"),
    (raw(amount_usd="100"), ev.REJECT_WRONG_TYPE, "amount_usd", "number"),
    (raw(amount_usd=True), ev.REJECT_WRONG_TYPE, "amount_usd", "number"),
    (raw(amount_usd=-5), ev.REJECT_BAD_VALUE, "amount_usd", ">= 0"),
    (raw(amount_usd=10**400), ev.REJECT_BAD_VALUE, "amount_usd", "finite"),
    (raw(amount_usd=None), ev.REJECT_MISSING_FIELD, "amount_usd", "withdrawal"),
    (raw(address=_DROP), ev.REJECT_MISSING_FIELD, "address", "withdrawal"),
    (raw(ip=12), ev.REJECT_WRONG_TYPE, "ip", "string"),
    (raw(side="long"), ev.REJECT_BAD_VALUE, "side", "buy"),
    (raw(type="trade", side=None), ev.REJECT_MISSING_FIELD, "side", "trade"),
    (raw(type="trade", side="buy", quantity=0), ev.REJECT_BAD_VALUE, "quantity", "greater"),
    (raw(type="login", device_id=None), ev.REJECT_MISSING_FIELD, "device_id", "login"),
    (raw(counterparty_id="c-1"), ev.REJECT_BAD_VALUE, "counterparty_id", "itself"),
]


@pytest.mark.parametrize(("data", "code", "field", "words"), MALFORMED)
def test_malformed_events_have_a_clear_reason(data, code, field, words) -> None:
    with pytest.raises(MalformedEvent) as info:
        parse_event(data)
    exc = info.value
    assert isinstance(exc, FormatError)
    assert exc.code == code and exc.code in ev.REJECT_CODES
    assert exc.field == field
    assert words.lower() in exc.reason.lower(), exc.reason
    assert len(exc.reason) < 200


def test_every_reject_code_is_exercised() -> None:
    assert {case[1] for case in MALFORMED} == set(ev.REJECT_CODES)


def test_timestamps() -> None:
    for ms in (0, 1, 999, 1714564800250, 4102444799999):
        assert parse_ts(format_ts(ms)) == ms
    assert format_ts(1714564800250) == "2024-05-01T12:00:00.250Z"


def test_timestamp_fast_path_is_as_strict_as_the_parser() -> None:
    # once an hour has been seen in canonical form, its other instants take a fast path:
    # it must give the same value, canonical text and errors as the strict parser
    ev._HOURS.clear()
    assert parse_ts("2024-05-01T12:00:00.000Z") == 1714564800000
    assert "2024-05-01T12:" in ev._HOURS
    assert parse_ts("2024-05-01T12:59:59.999Z") == 1714568399999
    assert parse_ts("2024-05-01T12:00:00.250+00:00") == 1714564800250
    assert ev._parse_ts("2024-05-01T12:00:00.250+00:00", "ts")[1] == "2024-05-01T12:00:00.250Z"
    for bad in (
        "2024-05-01T12:60:00.000Z",
        "2024-05-01T12:00:60.000Z",
        "2024-05-01T12:+1:00.000Z",
        "2024-05-01T12: 1:00.000Z",
        "2024-05-01T12:00:00.2_0Z",
        "2024-05-01T12:00:00,250Z",
    ):
        with pytest.raises(MalformedEvent) as info:
            parse_ts(bad)
        assert info.value.code == ev.REJECT_BAD_TS
    e = parse_event(b'{"event_id":"e","ts":"2024-05-01T12:34:56.789Z","customer_id":"c",'
                    b'"type":"logout"}')  # fmt: skip
    assert (e.ts, e.ts_ms) == ("2024-05-01T12:34:56.789Z", 1714566896789)
    assert e == Event.make(event_id="e", ts_ms=e.ts_ms, customer_id="c", type="logout")


def test_country_distance() -> None:
    assert ev.country_distance_km("DE", "DE") == 0.0
    assert 6000 < ev.country_distance_km("DE", "US") < 7000
    assert ev.country_distance_km("DE", "AQ") is None
    assert set(ev.COUNTRY_LOCATIONS) <= ev.ISO_COUNTRIES
    assert len(ev.ISO_COUNTRIES) == 249


def _alert(**changes: object) -> Alert:
    fields = dict(
        pattern=ev.WASH_TRADING,
        customer_ids=["c-2", "c-1", "c-2"],
        anchor="e-9",
        first_ts_ms=1_000,
        last_ts_ms=61_000,
        detected_at_ms=62_500,
        severity=ev.HIGH,
        score=0.93,
        reason="c-1 and c-2 traded BTC back and forth 12 times in 10 minutes.",
        evidence=[Evidence(ev.INPUT_LEDGER, 3, 17), Evidence(ev.INPUT_LEDGER, 0, 4)],
    )
    fields.update(changes)
    return Alert.build(**fields)


def test_alert_round_trip() -> None:
    alert = _alert()
    assert alert.customer_ids == ("c-1", "c-2")
    assert alert.first_ts == "1970-01-01T00:00:01.000Z" and alert.detected_at_ms == 62_500
    assert Alert.from_json(alert.to_json()) == alert
    obj = json.loads(alert.to_json())
    assert list(obj) == [
        "alert_id", "pattern", "customer_ids", "first_ts", "last_ts", "detected_at",
        "severity", "score", "reason", "evidence",
    ]  # fmt: skip
    assert obj["evidence"][0] == {"ledger": "logs-customer-trading", "partition": 3, "seq": 17}
    obj["unknown"] = 1
    assert Alert.from_json(json.dumps(obj)) == alert


def test_alert_id_dedups_the_same_incident() -> None:
    a = make_alert_id(ev.WASH_TRADING, ["c-2", "c-1"], "e-9")
    assert a == make_alert_id(ev.WASH_TRADING, ["c-1", "c-2", "c-1"], "e-9")
    assert a != make_alert_id(ev.WASH_TRADING, ["c-1", "c-2"], "e-10")
    assert a != make_alert_id(ev.PUMP_AND_DUMP, ["c-1", "c-2"], "e-9")
    assert a != make_alert_id(ev.WASH_TRADING, ["c-1"], "e-9")
    # later detection of the same incident: same id
    assert _alert(detected_at_ms=99_000).alert_id == _alert().alert_id


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"pattern": "bank_robbery"}, "pattern"),
        ({"severity": "urgent"}, "severity"),
        ({"score": 1.5}, "score"),
        ({"customer_ids": []}, "customer_ids"),
        ({"last_ts_ms": 0}, "last_ts"),
    ],
)
def test_invalid_alerts(changes, field) -> None:
    with pytest.raises(MalformedEvent) as info:
        _alert(**changes)
    assert info.value.field == field


def test_malformed_alert_json() -> None:
    good = json.loads(_alert().to_json())
    for key, value in [("customer_ids", "c-1"), ("evidence", [{"ledger": "x"}]), ("score", "hi"),
                       ("reason", None), ("first_ts", "yesterday")]:  # fmt: skip
        with pytest.raises(MalformedEvent):
            Alert.from_json(json.dumps({**good, key: value}))
    with pytest.raises(MalformedEvent):
        Alert.from_json(b"nope")
    assert ev.INTEGRITY in ev.ALERT_PATTERNS and ev.INTEGRITY not in ev.PATTERNS
