#!/usr/bin/env bash
# Run ../shared/bench side by side: riverside-trio against websockets, trio-websocket and
# trio-raw, in one invocation (peers interleaved run by run). Extra arguments go to bench.py,
# e.g.:  bench/run.sh --scenarios echo --sizes 64 --repeat 5
#
# riverside-trio runs on $RIVERSIDE_PYTHON (default: python3 on PATH, which must have the
# project installed: pip install -e .); the harness and the other peers on its own venv
# ($BENCH_PYTHON, default /tmp/benchenv/bin/python, created on first use).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${RIVERSIDE_BENCH_HARNESS:-$here/../../shared/bench}
bench_python=${BENCH_PYTHON:-/tmp/benchenv/bin/python}
python=${RIVERSIDE_PYTHON:-$(command -v python3)}

if [ ! -x "$bench_python" ]; then
    python3 -m venv "$(dirname "$(dirname "$bench_python")")"
    "$bench_python" -m pip install -r "$harness/requirements.txt"
fi
"$python" -c "import riverside_trio.wire.frames as f; print('riverside-trio hot path:', f.IMPLEMENTATION)"

# Defaults that the caller's own --peers / --baseline replace.
defaults=(--peers websockets,trio-websocket,trio-raw --baseline websockets)
for arg in "$@"; do
    case "$arg" in --peers | --peers=* | --baseline | --baseline=*) defaults=() ;; esac
done
if [ "${#defaults[@]}" -eq 0 ] && ! printf '%s\n' "$@" | grep -q -- '--baseline'; then
    defaults=(--baseline riverside-trio)
fi
exec "$bench_python" "$harness/bench.py" \
    --peer "riverside-trio=$python $here/server.py" \
    "${defaults[@]}" \
    "$@"
