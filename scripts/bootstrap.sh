#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine: Java (for Spark), a Python 3.11
# virtualenv in .venv with the pinned lock installed and byte-compiled. Idempotent: does
# nothing when the lock, pyproject and this script are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MLOPS_VENV:-.venv}
UV_VERSION=0.13.9
stamp="$VENV/.installed"
want=$(cat requirements.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)

if ! command -v java >/dev/null 2>&1; then
  echo "bootstrap: Java not found; Spark needs a JRE (17)." >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing openjdk-17-jre-headless with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "bootstrap: install a Java 17 runtime (e.g. apt-get install openjdk-17-jre-headless) and retry" >&2
    exit 1
  fi
fi

# Redis: the Celery broker of the cluster topology (make stack-up, the cluster tests)
if [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server with apt-get (the cluster topology's Celery broker)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
  else
    echo "bootstrap: redis-server not found; the cluster topology needs it (apt-get install redis-server)" >&2
  fi
fi

# Chromium: the control room's browser tests drive Debian's chromium through Playwright
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium with apt-get (the control room's browser tests)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
  else
    echo "bootstrap: chromium not found; the control room's browser tests need it (apt-get install chromium)" >&2
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "bootstrap: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

echo "bootstrap: creating $VENV with $($PYTHON --version) and the pinned lock (about 2 minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
# Byte-compile at install: imports of airflow/mlflow/GX/evidently are ~3x faster with .pyc
# files, and PYTHONDONTWRITEBYTECODE environments never write them on their own.
"$VENV/bin/uv" pip sync -q --compile-bytecode -p "$VENV/bin/python" requirements.txt
"$VENV/bin/uv" pip install -q --compile-bytecode --no-deps -p "$VENV/bin/python" -e .
echo "$want" > "$stamp"
echo "bootstrap: ready ($VENV)"
