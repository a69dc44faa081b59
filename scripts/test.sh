#!/usr/bin/env bash
# Install everything (Python deps in .venv, Apache Kafka jars from Maven Central) and run
# the linter and the whole test suite. The tests start their own Kafka broker on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamledger needs Python 3.11+")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python tools/kafka/local_kafka.py install
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
