"""Topic layout, topic settings and error translation of the Kafka backend."""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamledger.errors import BackendUnavailable, ConfigError

log = logging.getLogger("streamledger.kafka")
log.addHandler(logging.NullHandler())  # librdkafka chatter goes to logging, not stderr

#: Compacted topic: key = ledger name, value = the ledger's JSON config.
REGISTRY_TOPIC = "__streamledger_ledgers"
CHECKPOINTS_SUFFIX = ".checkpoints"
HISTORY_SUFFIX = ".checkpoint-history"
DOCUMENTS_SUFFIX = ".documents"
DEFAULT_TRANSACTIONAL_ID = "streamledger-{ledger}"

FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
UNREACHABLE_CODES = frozenset(
    {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}
)
UNKNOWN_TOPIC_CODES = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)


def checkpoints_topic(ledger: str) -> str:
    return ledger + CHECKPOINTS_SUFFIX


def history_topic(ledger: str) -> str:
    return ledger + HISTORY_SUFFIX


def documents_topic(ledger: str) -> str:
    return ledger + DOCUMENTS_SUFFIX


def check_ledger_name(ledger: str) -> None:
    """A ledger name must leave room for its companion topics and not shadow one."""
    if len(history_topic(ledger)) > 249:
        raise ConfigError(
            f"ledger name {ledger!r} is too long for Kafka: '{history_topic(ledger)}' must fit "
            "in 249 characters (use at most 230)"
        )
    if ledger.startswith("__"):
        raise ConfigError(f"ledger name {ledger!r}: names starting with '__' are Kafka-internal")
    if ledger.endswith((CHECKPOINTS_SUFFIX, HISTORY_SUFFIX, DOCUMENTS_SUFFIX)):
        raise ConfigError(
            f"ledger name {ledger!r} ends like a companion topic "
            f"('{CHECKPOINTS_SUFFIX}', '{HISTORY_SUFFIX}'): choose another name"
        )


def _opt(options: dict[str, str], *names: str) -> str | None:
    for name in names:
        if name in options:
            return str(options[name])
    return None


def topic_settings(options: dict[str, str], brokers: int) -> tuple[int, dict[str, str]]:
    """Replication factor and topic config of a ledger topic from ``LedgerConfig.options``.

    Recognised options: ``replication.factor`` (default ``min(3, brokers)``),
    ``min.insync.replicas`` (default ``max(1, rf - 1)``), ``retention.ms`` and
    ``retention.bytes`` (default -1: keep forever), and any ``topic.<kafka setting>``.
    ``_`` may stand for ``.`` in the names (``replication_factor``).
    """
    opts = {k.replace("_", "."): v for k, v in options.items()}
    try:
        rf_text = _opt(opts, "replication.factor")
        rf = int(rf_text) if rf_text is not None else max(1, min(3, brokers))
        isr_text = _opt(opts, "min.insync.replicas")
        min_isr = int(isr_text) if isr_text is not None else max(1, rf - 1)
    except ValueError as exc:
        raise ConfigError(f"bad Kafka ledger option: {exc}") from None
    if rf < 1 or not 1 <= min_isr <= rf:
        raise ConfigError(f"need 1 <= min.insync.replicas ({min_isr}) <= replication.factor ({rf})")
    config = {
        "retention.ms": _opt(opts, "retention.ms") or "-1",
        "retention.bytes": _opt(opts, "retention.bytes") or "-1",
        "min.insync.replicas": str(min_isr),
        "cleanup.policy": "delete",
    }
    for key, value in opts.items():
        if key.startswith("topic."):
            config[key[len("topic.") :]] = str(value)
    return rf, config


def transactional_id_for(template: str, ledger: str) -> str:
    try:
        return template.format(ledger=ledger, host=socket.gethostname())
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"transactional_id {template!r} may only use the placeholders {{ledger}} and "
            f"{{host}}: {exc}"
        ) from None


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def describe(exc: BaseException) -> str:
    err = kafka_error(exc)
    if err is None:
        return str(exc)
    return f"{err.str()} ({err.name()})"


def unavailable(bootstrap: str, what: str, exc: BaseException | str, last: str = "") -> Exception:
    """The exception to raise for a failed Kafka call: BackendUnavailable or ConfigError."""
    detail = exc if isinstance(exc, str) else describe(exc)
    err = kafka_error(exc) if isinstance(exc, BaseException) else None
    if err is not None and err.code() in UNKNOWN_TOPIC_CODES:
        return ConfigError(f"{what}: topic or partition does not exist on {bootstrap}: {detail}")
    hint = f"; last client error: {last}" if last and last not in detail else ""
    if err is None or err.code() in UNREACHABLE_CODES:
        hint += " (is the cluster running and reachable at that address?)"
    return BackendUnavailable(f"Kafka at {bootstrap}: {what} failed: {detail}{hint}")


def safe_dirname(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "cluster"


def producer_settings(timeout: float = 10.0) -> dict[str, Any]:
    """The producer settings of the ledger writer (the benchmark uses the same for raw
    confluent-kafka, so both are measured with one configuration)."""
    tx_ms = int(max(60.0, timeout * 3) * 1000)
    return {
        "linger.ms": 5,
        # Retry after 5 ms (doubling up to retry.backoff.max.ms, 1 s), not 100 ms: right
        # after a commit the transaction coordinator answers the next transaction's
        # AddOffsetsToTxn with CONCURRENT_TRANSACTIONS while it writes the commit markers,
        # and each send_offsets_to_transaction (the sequencer's exactly-once offsets) then
        # waited a whole 100 ms backoff: 95 ms of a 1,000-record transaction of 100 B that
        # otherwise takes 5 ms.
        "retry.backoff.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "transaction.timeout.ms": tx_ms,
        "message.timeout.ms": tx_ms,
        "socket.connection.setup.timeout.ms": str(int(timeout * 1000)),
        "enable.idempotence": True,
        "acks": "all",
    }


def consumer_settings(timeout: float = 10.0) -> dict[str, Any]:
    """The consumer settings of every reader (scan, read, verify); the benchmark's raw
    consumer uses the same."""
    return {
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.min.messages": 200_000,
        "fetch.wait.max.ms": 20,
        # librdkafka waits fetch.queue.backoff.ms (default 1 s) before fetching again once
        # its queue is over queued.max.messages.kbytes (64 MB): with 10 KiB records that is
        # every ~6,500 records, and reading stalled for a second each time (18K/s instead of
        # 150K/s, raw consumer and ledger alike).
        "fetch.queue.backoff.ms": 10,
        "socket.connection.setup.timeout.ms": str(int(timeout * 1000)),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }


def client_config(
    bootstrap: str, user: dict[str, str], error_cb: Any, **defaults: Any
) -> dict[str, Any]:
    """librdkafka settings: our defaults, then the user's (security etc.), then callbacks."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **defaults}
    conf.update(user)
    conf["logger"] = log
    conf["error_cb"] = error_cb
    return conf
