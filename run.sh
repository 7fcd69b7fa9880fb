#!/usr/bin/env bash
# One entry point for users and CI.
#   ./run.sh                 set up on first use, then run the whole pipeline on the embedded demo dataset
#   ./run.sh test [args]     run the test suite (args go to pytest)
#   ./run.sh CMD [args]      python -m pipeline CMD [args]   (./run.sh --help lists the commands)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256

need_install() {
  [[ -x $VENV/bin/python ]] || return 0
  [[ -f $STAMP ]] || return 0
  [[ "$(sha256sum requirements.txt | cut -d' ' -f1)" != "$(cat "$STAMP")" ]]
}

if need_install; then
  echo "[run.sh] installing requirements into $VENV (first use, or requirements.txt changed)..." >&2
  [[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
  log=$VENV/install.log
  if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt; } >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -n 30 >&2
    echo "[run.sh] install failed; full log: $log" >&2
    exit 1
  fi
  sha256sum requirements.txt | cut -d' ' -f1 > "$STAMP"
  echo "[run.sh] install done." >&2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cmd=${1:-demo}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test)
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    # pytest exits 5 when no test was collected: that is a failure for CI, not a pass.
    exit $rc
    ;;
  *)
    exec "$VENV/bin/python" -m pipeline "$cmd" "$@"
    ;;
esac
