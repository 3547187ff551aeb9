#!/usr/bin/env bash
# A/B: two commits of riverside-trio side by side in one harness run, interleaved run by run.
#
#   bench/ab.sh BASE [HEAD] [-- bench.py options]
#
# BASE and HEAD are any git revisions (HEAD defaults to the work tree as it is). Each is
# checked out into its own directory under ${RIVERSIDE_AB_DIR:-/tmp/riverside-ab}, installed
# into its own venv with the compiled hot path built (a build failure stops the script), and
# served by its own bench/server.py. The peers are named "A:<rev>" and "B:<rev>"; ratios are
# relative to A. Example (the issue-7 A/B):
#
#   bench/ab.sh d1dc955 main -- --scenarios echo,fanout,idle --sizes 64 --repeat 5 \
#       --report bench/results/ab-issue7.md --json bench/results/ab-issue7.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
harness=${RIVERSIDE_BENCH_HARNESS:-$top/../shared/bench}
bench_python=${BENCH_PYTHON:-/tmp/benchenv/bin/python}
work=${RIVERSIDE_AB_DIR:-/tmp/riverside-ab}

[ $# -ge 1 ] || { echo "usage: bench/ab.sh BASE [HEAD] [-- bench.py options]" >&2; exit 2; }
base=$1; shift
head=""
if [ $# -ge 1 ] && [ "$1" != "--" ]; then head=$1; shift; fi
[ $# -ge 1 ] && [ "$1" = "--" ] && shift

if [ ! -x "$bench_python" ]; then
    python3 -m venv "$(dirname "$(dirname "$bench_python")")"
    "$bench_python" -m pip install -r "$harness/requirements.txt"
fi

# prepare REV NAME -> prints the python and the source directory to serve from
prepare() {
    local rev=$1 name=$2 src venv
    venv="$work/venv-$name"
    if [ -z "$rev" ]; then
        src=$top
    else
        src="$work/src-$name"
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$top" archive "$(git -C "$top" rev-parse --verify "$rev^{commit}")" | tar -x -C "$src"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet "$src" >&2
    RIVERSIDE_BUILD_EXTENSIONS=1 "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$src" >&2
    (cd / && "$venv/bin/python" -c "import riverside_trio.wire.frames as f; assert f.IMPLEMENTATION == 'c'" 2>/dev/null \
        || "$venv/bin/python" -c "import riverside_trio.frames as f; assert f.IMPLEMENTATION == 'c'") \
        || { echo "ab.sh: $name ($rev) did not build its compiled hot path" >&2; exit 1; }
    echo "$venv/bin/python $src/bench/server.py"
}

mkdir -p "$work"
label_a="A:$(git -C "$top" rev-parse --short "$base")"
label_b="B:${head:+$(git -C "$top" rev-parse --short "$head")}"
[ -n "$head" ] || label_b="B:worktree"
cmd_a=$(prepare "$base" a)
cmd_b=$(prepare "$head" b)
echo "A = $base -> $cmd_a" >&2
echo "B = ${head:-work tree} -> $cmd_b" >&2

exec "$bench_python" "$harness/bench.py" \
    --peers , \
    --peer "$label_a=$cmd_a" \
    --peer "$label_b=$cmd_b" \
    --baseline "$label_a" \
    "$@"
