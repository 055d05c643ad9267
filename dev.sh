#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs the CPU torch wheel first
# (a bare `torch` requirement would pull a multi-GB CUDA build), then subsetlab itself.
#
#   bash dev.sh run [ARGS]    set up, then `subsetlab run ARGS` (default: the quick suite)
#   bash dev.sh test [ARGS]   set up with the dev extra, then `python -m pytest ARGS`
#   bash dev.sh docs          set up with the docs extra, then `mkdocs build --strict`
#   bash dev.sh setup         set up only (dev + docs extras)
#
# Environment: SUBSETLAB_VENV (default .venv), SUBSETLAB_TORCH (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SUBSETLAB_VENV:-.venv}
TORCH_SPEC=${SUBSETLAB_TORCH:-torch==2.13.0}
PY="$VENV/bin/python"

setup() {
  local extras=$1
  [ -x "$PY" ] || python3 -m venv "$VENV"
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "dev.sh: installing $TORCH_SPEC (CPU wheel) into $VENV" >&2
    "$PY" -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" >&2 || true
    "$PY" -W ignore -c "import torch" || { echo "dev.sh: torch failed to install" >&2; exit 1; }
  fi
  local stamp="$VENV/.subsetlab-$extras-$(cksum < pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ]; then
    echo "dev.sh: installing subsetlab[$extras] into $VENV" >&2
    "$PY" -m pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
    "$PY" -c "import subsetlab, pydantic, sklearn" || { echo "dev.sh: install failed" >&2; exit 1; }
    touch "$stamp"
  fi
}

cmd=${1:-run}
shift || true
case "$cmd" in
  run)   setup dev; exec "$VENV/bin/subsetlab" run "$@" ;;
  test)  setup dev; exec "$PY" -m pytest "$@" ;;
  docs)  setup dev,docs; NO_MKDOCS_2_WARNING=1 exec "$VENV/bin/mkdocs" build --strict "$@" ;;
  setup) setup dev,docs ;;
  *) echo "usage: bash dev.sh {run|test|docs|setup} [ARGS]" >&2; exit 2 ;;
esac
