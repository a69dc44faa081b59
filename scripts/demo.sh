#!/usr/bin/env bash
# Install streamledger into .venv and run the demo on the embedded (SQLite) backend.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamledger needs Python 3.11+")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# cargo (rustup's default place) builds the optional native accelerator (native/).
export PATH="$HOME/.cargo/bin:$PATH"
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/streamledger demo "$@"
