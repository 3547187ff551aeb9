"""The fuzz targets (``fuzz/targets.py``): a bounded atheris run of each, the seeds and every
input that once failed replayed, and proof that each target's oracle does catch a fault.

The bounded runs need atheris (wheels: CPython 3.11-3.13 on Linux x86_64) and are skipped
where it is not installed; the rest runs everywhere. ``fuzz/run.py`` makes the long runs
(CONTRIBUTING.md; results in ``fuzz/RESULTS.md``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from fuzz import run, targets
from fuzz.targets import Input, Mismatch, encode
from riverside_trio.config import Config
from riverside_trio.errors import ProtocolError
from riverside_trio.wire import _frames_py

ROOT = Path(__file__).resolve().parent.parent
C_ONLY = {"parser"}  # compares the compiled parser with its twin
# Inputs per target in the suite's run: a few seconds in all on a loaded machine.
RUNS = {"parser": 3000, "head": 400, "server": 200, "inflate": 3000}


def _param(name: str) -> Any:
    return pytest.param(name, marks=[pytest.mark.c_extension] if name in C_ONLY else [])


@pytest.mark.parametrize("name", [_param(n) for n in targets.TARGETS])
def test_bounded_fuzz_run(name: str, tmp_path: Path) -> None:
    """atheris, a fixed seed and number of inputs: no crash, no mismatch."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (wheels: CPython 3.11-3.13, Linux x86_64)")
    crashes = tmp_path / "crashes"
    proc = subprocess.run(
        [
            *(sys.executable, str(ROOT / "fuzz" / "run.py"), "--target", name, "--seed", "1"),
            *("--runs", str(RUNS[name]), "--corpus", str(tmp_path), "--crashes", str(crashes)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = re.search(r"inputs tried: (\d+), crashes: (\d+), mismatches: (\d+)", proc.stdout)
    assert summary, proc.stdout + proc.stderr
    assert summary.groups() == (str(RUNS[name]), "0", "0"), proc.stdout
    assert proc.returncode == 0 and not crashes.exists(), proc.stdout


@pytest.mark.parametrize("name", [_param(n) for n in targets.TARGETS])
def test_seeds_and_found_inputs_pass(name: str) -> None:
    """The built-in seeds and every input kept in fuzz/corpus/<target>/ (inputs that failed
    once, fixed since) go through their target cleanly."""
    kept = sorted((ROOT / "fuzz" / "corpus" / name).glob("*"))
    for data in targets.SEEDS[name]() + [p.read_bytes() for p in kept]:
        targets.TARGETS[name](data)


def test_input_reads_options_then_chunks() -> None:
    inp = Input(encode(b"\x05\x06", [b"ab", b"", b"cde"]))
    assert (inp.byte(), inp.byte()) == (5, 6)
    assert inp.chunks() == [b"ab", b"", b"cde"]
    assert Input(b"").byte() == 0 and Input(b"").chunks() == [b""]


class _OffByOneCode:
    """The twin, but reporting 1002 failures as 1003: the parser target must notice."""

    def __init__(self, size: int, *, deflate: bool = False) -> None:
        self._p = _frames_py.FrameParser(size, deflate=deflate)
        self.feed = self._p.feed

    @property
    def buffered(self) -> int:
        return self._p.buffered

    def next_event(self) -> Any:
        try:
            return self._p.next_event()
        except ProtocolError as exc:
            raise ProtocolError(exc.code + (exc.code == 1002), exc.reason) from None


def test_parser_target_catches_a_mismatch() -> None:
    good = targets.SEEDS["parser"]()[0]
    bad_opcode = encode(b"\x00", [b"\x83\x80\x00\x00\x00\x00"])
    twin = _frames_py.FrameParser
    targets.parser(good, compiled=twin, twin=_OffByOneCode)  # no failure: same events
    targets.parser(bad_opcode, compiled=twin, twin=twin)
    with pytest.raises(Mismatch, match=r"1002.*1003"):
        targets.parser(bad_opcode, compiled=twin, twin=_OffByOneCode)


def test_response_checks_catch_bad_answers() -> None:
    config = Config()
    upgrade = targets._UPGRADE
    ok = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    assert targets.check_response(ok, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", config)[0] == 404
    bad = [
        ok.replace(b"404 Not Found", b"999 Nope"),
        ok.replace(b"404 Not Found", b"404 Found"),
        ok.replace(b"Content-Length: 2", b"Content-Length: 3"),
        ok.replace(b"Connection: close\r\n", b""),
        ok.replace(b"\r\n\r\n", b"\r\n"),
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    ]
    for raw in bad:
        with pytest.raises(AssertionError):
            targets.check_response(raw, upgrade, config)
    with pytest.raises(AssertionError, match="close code"):
        targets.check_frames(b"\x88\x02\x03\xed")  # 1005 is never sent
    with pytest.raises(AssertionError, match="after the close"):
        targets.check_frames(b"\x88\x00\x81\x00")


def test_inflate_target_catches_an_uncapped_inflater(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb of 5000 bytes against a cap of 1024: the real inflater says 1009; one that
    forgets its cap is caught."""
    bomb = encode(b"\x00\x03", [zlib.compress(b"x" * 5000, wbits=-15)])
    targets.inflate(bomb)

    class Uncapped:
        def __init__(self, cap: int, reset: bool) -> None:
            self._d = zlib.decompressobj(-15)

        def inflate(self, payload: bytes) -> bytes:
            return self._d.decompress(payload + b"\x00\x00\xff\xff")

    monkeypatch.setattr(targets, "Inflater", Uncapped)
    with pytest.raises(AssertionError, match="past the cap"):
        targets.inflate(bomb)


def test_run_saves_each_distinct_failure(tmp_path: Path) -> None:
    """fuzz/run.py counts failures, keeps the first input of each, and reports them."""
    tally = run.Tally("demo", tmp_path)

    def target(data: bytes) -> None:
        if data.startswith(b"m"):
            raise Mismatch("twins disagree")
        if data.startswith(b"x"):
            raise ValueError("boom")

    for data in (b"ok", b"x1", b"x2", b"m1"):
        tally.run(target, data, Mismatch)
    assert (tally.tried, tally.crashed, tally.mismatched) == (4, 2, 1)
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"m1", b"x1"]
    assert tally.report() == 1
    assert run.Tally("clean", tmp_path / "none").report() == 0
