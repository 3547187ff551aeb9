"""Run a fuzz target with atheris (coverage-guided), or replay inputs through it.

    python fuzz/run.py --target parser --seconds 600      # a long run of one target
    python fuzz/run.py --target all --runs 2000 --seed 1  # bounded and repeatable (the suite's)
    python fuzz/run.py --target head --replay crash-*     # no atheris needed

Prints, per target, the inputs tried, the crashes (an exception escaped or an invariant
broke) and the mismatches (compiled parser against its twin), and writes the first input of
each distinct failure to ``--crashes`` (``<target>-<sha1>``); exits 1 if there was any. The
run goes on after a failure, so one long run counts them all. The targets are in
``fuzz/targets.py``; ``fuzz/corpus/<target>/`` holds inputs that once failed (replayed by
``tests/test_fuzz.py``) and is read as seed corpus with the built-in seeds. One target runs
per process (atheris runs once per process): ``--target all`` starts one process each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("parser", "head", "server", "inflate")


class Tally:
    """Counts inputs and failures, and keeps the first input of each distinct failure."""

    def __init__(self, target: str, crashes: Path) -> None:
        self.target = target
        self.crashes = crashes
        self.tried = 0
        self.crashed = 0
        self.mismatched = 0
        self.seen: dict[str, Path] = {}
        self.started = time.monotonic()

    def run(self, fn: Callable[[bytes], None], data: bytes, mismatch: type[BaseException]) -> None:
        self.tried += 1
        try:
            fn(data)
        except Exception as exc:
            if isinstance(exc, mismatch):
                self.mismatched += 1
            else:
                self.crashed += 1
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"
            if key not in self.seen:
                self.crashes.mkdir(parents=True, exist_ok=True)
                path = self.crashes / f"{self.target}-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                self.seen[key] = path
                print(f"[{self.target}] {key}: {str(exc)[:500]}\n  input saved: {path}", flush=True)
                traceback.print_exception(exc, file=sys.stdout)

    def report(self) -> int:
        elapsed = time.monotonic() - self.started
        print(
            f"[{self.target}] inputs tried: {self.tried}, crashes: {self.crashed}, "
            f"mismatches: {self.mismatched}, distinct failures: {len(self.seen)}, "
            f"{elapsed:.0f} s ({self.tried / max(elapsed, 1e-9):.0f} inputs/s)",
            flush=True,
        )
        return 1 if self.seen else 0


def _targets() -> ModuleType:
    sys.path.insert(0, str(ROOT))
    from fuzz import targets

    return targets


def replay(target: str, files: list[str], crashes: Path) -> int:
    """Run ``target`` once on each file."""
    targets = _targets()
    tally = Tally(target, crashes)
    for name in files:
        tally.run(targets.TARGETS[target], Path(name).read_bytes(), targets.Mismatch)
    return tally.report()


def fuzz(target: str, args: argparse.Namespace) -> int:
    """Fuzz ``target`` with atheris until ``--runs`` inputs or ``--seconds`` have passed."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["riverside_trio", "h11", "fuzz"]):
        targets = _targets()
    fn = targets.TARGETS[target]
    mismatch = targets.Mismatch
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix=f"riverside-fuzz-{target}-"))
    corpus = corpus / target if args.corpus else corpus
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in targets.SEEDS[target]():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    dirs = [str(corpus)]
    kept = ROOT / "fuzz" / "corpus" / target
    if kept.is_dir():
        dirs.append(str(kept))
    tally = Tally(target, Path(args.crashes))
    deadline = time.monotonic() + args.seconds if args.seconds else None

    def one(data: bytes) -> None:
        tally.run(fn, data, mismatch)
        if (args.runs and tally.tried >= args.runs) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            sys.stdout.flush()
            os._exit(tally.report())

    print(f"[{target}] corpus {corpus}, crashes to {args.crashes}", flush=True)
    argv = [
        sys.argv[0],
        f"-seed={args.seed}",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=2048",
        f"-timeout={args.timeout}",
        "-print_final_stats=0",
        *([] if args.verbose else ["-verbosity=0"]),
        *dirs,
    ]
    atheris.Setup(argv, one)
    atheris.Fuzz()
    return tally.report()  # pragma: no cover - libFuzzer exits before (out of inputs: -runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=[*NAMES, "all"], required=True)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many inputs")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input, bytes")
    parser.add_argument("--timeout", type=int, default=60, help="seconds one input may take")
    parser.add_argument("--corpus", help="work corpus directory (default: a new temp dir)")
    parser.add_argument(
        "--crashes",
        default=os.path.join(tempfile.gettempdir(), "riverside-fuzz-crashes"),
        help="where failing inputs are written",
    )
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs, no fuzzing")
    parser.add_argument("--verbose", action="store_true", help="libFuzzer's progress lines")
    args = parser.parse_args()
    if not (args.seconds or args.runs or args.replay):
        parser.error("give --seconds, --runs or --replay")
    if args.target == "all":
        if args.replay:
            parser.error("--replay needs one --target")
        rest = [a for a in sys.argv[1:] if a not in ("--target", "all")]
        codes = [
            subprocess.call([sys.executable, __file__, "--target", name, *rest]) for name in NAMES
        ]
        return max(codes)
    if args.replay:
        return replay(args.target, args.replay, Path(args.crashes))
    return fuzz(args.target, args)


if __name__ == "__main__":
    sys.exit(main())
