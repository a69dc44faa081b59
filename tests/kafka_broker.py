"""pytest plugin: a real Apache Kafka broker for the test session.

Enable with ``pytest_plugins = ["tests.kafka_broker"]`` in tests/conftest.py.

Fixtures:
    kafka_broker     (session) the running broker: ``.bootstrap``, ``.pid``, ``.log_path``,
                     ``.kill()`` (SIGKILL) and ``.start_again()`` (same port and data).
    kafka_bootstrap  (session) "host:port" string.
    kafka_new_topic  (function) factory: ``kafka_new_topic(partitions=1, **config) -> name``.

By default one broker per session (per xdist worker) is started from
tools/kafka/local_kafka.py in a temporary directory; a watchdog stops it if pytest dies.
Set ``STREAMLEDGER_KAFKA=host:port`` to use an existing cluster instead (tests that
need to kill/restart the broker are then skipped).

Tests using these fixtures get the ``kafka`` marker automatically, so
``pytest -m "not kafka"`` skips them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
from pathlib import Path

import pytest

_LOCAL_KAFKA_PATH = Path(__file__).resolve().parent.parent / "tools" / "kafka" / "local_kafka.py"
KAFKA_FIXTURES = frozenset({"kafka_broker", "kafka_bootstrap", "kafka_new_topic"})


def load_local_kafka():
    """Import tools/kafka/local_kafka.py (tools/ is not a package)."""
    name = "streamledger_local_kafka"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _LOCAL_KAFKA_PATH)
    assert spec and spec.loader, _LOCAL_KAFKA_PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ExternalKafka:
    """Stand-in for ``Broker`` when STREAMLEDGER_KAFKA points at an existing cluster."""

    pid = None
    log_path = None

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def __repr__(self) -> str:
        return f"ExternalKafka({self.bootstrap!r})"

    def is_running(self) -> bool:
        return True

    def kill(self) -> None:
        pytest.skip("needs the managed local broker (STREAMLEDGER_KAFKA is set)")

    start_again = kill

    def stop(self) -> None:
        pass


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka: needs the local Apache Kafka broker (tests/kafka_broker.py)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    external = os.environ.get("STREAMLEDGER_KAFKA")
    if external:
        yield ExternalKafka(external)
        return
    lk = load_local_kafka()
    data_dir = tmp_path_factory.mktemp("kafka")
    try:
        broker = lk.start_broker(port=None, data_dir=data_dir, watchdog_pid=os.getpid())
    except lk.KafkaToolError as exc:
        pytest.fail(f"could not start the local Kafka broker: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_new_topic(kafka_bootstrap: str):
    """Factory creating uniquely named topics; they are deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(partitions: int = 1, name: str | None = None, **config: str) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        admin.create_topics([topic], operation_timeout=30)[name].result(timeout=30)
        created.append(name)
        return name

    yield create
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            # best effort (the broker may have been killed by the test)
            with contextlib.suppress(Exception):
                fut.result(timeout=30)
