#!/usr/bin/env bash
# Install everything (Python deps in .venv, Apache Kafka jars from Maven Central) and run
# the linter and the whole test suite. The tests start their own Kafka broker on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamledger needs Python 3.11+")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# cargo (rustup's default place) builds the optional native accelerator (native/).
export PATH="$HOME/.cargo/bin:$PATH"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python tools/kafka/local_kafka.py install
.venv/bin/ruff check .
# CI proves the native accelerator was built and is used (tests/core/test_native.py).
export STREAMLEDGER_REQUIRE_NATIVE=${STREAMLEDGER_REQUIRE_NATIVE:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
