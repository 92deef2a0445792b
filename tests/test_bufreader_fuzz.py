"""Fuzzing ``BufReader`` with adversarial input, against a reference model.

Hypothesis generates input (binary junk, lines with ``\\n`` / ``\\r\\n`` / lone ``\\r``, huge
lines, input without any newline, input truncated mid-line or by a connection reset), the chunk
sizes the source hands it out in, a ``max_size`` (small, so that limits are hit all the time)
and a sequence of parsing calls. A plain-bytes model says what each call must return or raise;
after every call the reader must hold at most ``max_size`` bytes, and it never asks its source
for more than fits.

Documented behaviour checked here: a request that would need more than ``max_size`` bytes
raises ``BufferLimitExceeded``; input that ends too early raises ``EOFError`` (``take``,
``skip``, ``line`` at the very end) -- or, when the source breaks instead of ending, the
source's own ``ConnectionError``; nothing else escapes. The CI profile tries a few hundred
inputs in a few seconds; ``HYPOTHESIS_PROFILE=long`` tries fifty times more.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _reliability import hypothesis_settings
from hypothesis import example, given
from hypothesis import strategies as st

import greenbridge as gb
from greenbridge import flow

# -- the source ----------------------------------------------------------------------------------


class ChunkedSource(flow.Source):
    """Hands ``data`` out in the given chunk sizes (cycled); at the end returns 0, or raises
    ``ConnectionResetError`` when ``reset`` (a peer that vanished mid-message). With ``green``
    it suspends before every read, like a network flow."""

    def __init__(self, data: bytes, chunks: list[int], *, reset: bool, green: bool = False) -> None:
        super().__init__()
        self.data = data
        self.pos = 0
        self.chunks = itertools.cycle(chunks)
        self.reset = reset
        self.green = green
        self.reader: gb.BufReader | None = None
        self.passthrough = False  # a read straight into the caller's buffer (read_into)
        self.overdraft = 0  # how far past max_size a read could have filled the reader

    def read_into(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        reader = self.reader
        if reader is not None and not self.passthrough:  # the bound on what it asks for
            self.overdraft = max(self.overdraft, len(reader._buf) + len(out) - reader.max_size)
        if self.green:
            gb.sleep(0)
        if self.pos == len(self.data):
            if self.reset:
                raise ConnectionResetError("peer reset")
            return 0
        n = min(len(out), next(self.chunks), len(self.data) - self.pos)
        out[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


# -- the model -----------------------------------------------------------------------------------


class Stop(Exception):
    """The reader is not specified past this point (see ``expect``)."""


@dataclass
class Expected:
    """What the model says a call does: its value, or the exception type it raises, and where
    the reader stands afterwards. ``prefix_of`` marks a ``read_into`` result (any non-empty
    prefix of the remaining input, up to the buffer's size)."""

    value: Any = None
    raises: type[BaseException] | None = None
    pos: int = 0
    prefix_of: bytes | None = None
    stop: bool = False  # BufferLimitExceeded after a probe, or a reset: end the sequence


def _run_length(rem: bytes, pred: Callable[[bytes], bool]) -> int:
    for i in range(len(rem)):
        if not pred(rem[i : i + 1]):
            return i
    return len(rem)


PREDICATES: dict[str, Callable[[bytes], bool]] = {
    "isdigit": bytes.isdigit,
    "isalpha": bytes.isalpha,
    "not-newline": lambda b: b != b"\n",
    "always": lambda b: True,
}


def expect(op: tuple[Any, ...], data: bytes, pos: int, limit: int, reset: bool) -> Expected:
    """The model of one call. ``touch_end``: the call needs to learn that the input ended; with
    ``reset`` the source raises there instead. A ``BufferLimitExceeded`` found by filling the
    buffer ends the sequence: the reader reads one byte past ``max_size`` to tell "more input"
    from "end of input", and what happens to that byte is pinned separately below."""
    rem = data[pos:]
    name = op[0]

    def touch_end(result: Expected) -> Expected:
        return Expected(raises=ConnectionResetError, stop=True) if reset else result

    def over_limit() -> Expected:
        return Expected(raises=gb.BufferLimitExceeded, stop=True)

    if name == "line":
        i = rem.find(b"\n")
        if i >= 0 and i + 1 <= limit:
            line = rem[:i]
            return Expected(value=line[:-1] if line.endswith(b"\r") else line, pos=pos + i + 1)
        if i >= 0 or len(rem) > limit:
            return over_limit()
        if rem:
            return touch_end(Expected(value=rem, pos=len(data)))
        return touch_end(Expected(raises=EOFError, pos=pos))
    if name == "take":
        n = op[1]
        if n > limit:
            return Expected(raises=gb.BufferLimitExceeded, pos=pos)  # refused up front
        if len(rem) >= n:
            return Expected(value=rem[:n], pos=pos + n)
        return touch_end(Expected(raises=EOFError, pos=pos))
    if name == "take_all":
        if len(rem) > limit:
            return over_limit()
        return touch_end(Expected(value=rem, pos=len(data)))
    if name == "take_while":
        r = _run_length(rem, PREDICATES[op[1]])
        if r < limit and r < len(rem):
            return Expected(value=rem[:r], pos=pos + r)
        if r <= limit and r == len(rem):
            return touch_end(Expected(value=rem, pos=len(data)))
        return over_limit()
    if name == "skip":
        n = op[1]
        if len(rem) >= n:
            return Expected(value=None, pos=pos + n)
        return touch_end(Expected(raises=EOFError, pos=len(data)))
    if name == "peek_char":
        return Expected(value=rem[:1], pos=pos) if rem else touch_end(Expected(value=None, pos=pos))
    if name == "at_end_of_input":
        return Expected(value=False, pos=pos) if rem else touch_end(Expected(value=True, pos=pos))
    if name == "read_into":
        if rem:
            return Expected(prefix_of=rem[: op[1]], pos=pos)
        return touch_end(Expected(value=b"", pos=pos))
    raise AssertionError(f"unknown operation {op!r}")


def call(reader: gb.BufReader, source: ChunkedSource, op: tuple[Any, ...]) -> Any:
    name = op[0]
    if name == "take_while":
        return reader.take_while(PREDICATES[op[1]])
    if name == "read_into":
        buf = bytearray(op[1])
        source.passthrough = True  # with nothing buffered, the reader reads into buf directly
        try:
            return bytes(buf[: reader.read_into(buf)])
        finally:
            source.passthrough = False
    if name in ("take", "skip"):
        return getattr(reader, name)(op[1])
    return getattr(reader, name)()


@dataclass
class Tally:
    """Figures for docs/reliability.md: how many calls ran and how each ended."""

    inputs: int = 0
    calls: int = 0
    limits: int = 0
    eofs: int = 0
    resets: int = 0


TALLY = Tally()


def check_sequence(
    data: bytes, chunks: list[int], limit: int, reset: bool, ops: list[Any], green: bool
) -> None:
    source = ChunkedSource(data, chunks, reset=reset, green=green)
    reader = gb.BufReader(source, max_size=limit)
    source.reader = reader
    pos = 0
    TALLY.inputs += 1
    for op in ops:
        want = expect(op, data, pos, limit, reset)
        TALLY.calls += 1
        try:
            got = call(reader, source, op)
        except (gb.BufferLimitExceeded, EOFError, ConnectionResetError) as exc:
            assert want.raises is not None and isinstance(exc, want.raises), (op, pos, exc, want)
            TALLY.limits += isinstance(exc, gb.BufferLimitExceeded)
            TALLY.eofs += isinstance(exc, EOFError)
            TALLY.resets += isinstance(exc, ConnectionResetError)
        else:
            assert want.raises is None, (op, pos, got, want)
            if want.prefix_of is not None:
                assert got and want.prefix_of.startswith(got), (op, pos, got, want)
                want.pos = pos + len(got)
            else:
                assert got == want.value, (op, pos, got, want)
        # The bound, after every call: unconsumed bytes and the buffer itself.
        assert reader.buffered() <= limit
        assert len(reader._buf) <= limit  # consumed bytes are dropped before reading more
        # Asking the source for at most what fits (plus the one-byte end-of-input probe).
        assert source.overdraft <= 1, source.overdraft
        if want.stop:
            break
        pos = want.pos
        # Model and reader agree on the position: what is buffered is the input from there.
        assert bytes(reader._buf[reader._pos :]) == data[pos : pos + reader.buffered()]
    reader.close()
    assert reader.buffered() == 0


# -- strategies ----------------------------------------------------------------------------------

separators = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
short_lines = st.lists(st.tuples(st.binary(max_size=40), separators), max_size=12).map(
    lambda parts: b"".join(line.replace(b"\n", b"") + sep for line, sep in parts)
)
huge_line = st.tuples(st.integers(0, 3000), st.booleans(), st.binary(max_size=20)).map(
    lambda t: b"x" * t[0] + (b"\n" if t[1] else b"") + t[2]
)
no_newline = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))
inputs = st.one_of(st.binary(max_size=300), short_lines, huge_line, no_newline, st.just(b""))
limits = st.one_of(st.integers(1, 64), st.sampled_from([1, 2, 1024]))
chunk_sizes = st.lists(st.integers(1, 80), min_size=1, max_size=5)
operations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["line", "take_all", "peek_char", "at_end_of_input"])),
        st.tuples(st.sampled_from(["take", "skip"]), st.integers(0, 100)),
        st.tuples(st.just("read_into"), st.integers(1, 100)),
        st.tuples(st.just("take_while"), st.sampled_from(sorted(PREDICATES))),
    ),
    max_size=25,
)


@hypothesis_settings(ci_examples=1000)
@given(data=inputs, chunks=chunk_sizes, limit=limits, reset=st.booleans(), ops=operations)
@example(data=b"x" * 5000, chunks=[80], limit=64, reset=False, ops=[("line",)])
@example(data=b"abc\r\n\r\ndef", chunks=[1], limit=4, reset=True, ops=[("line",)] * 4)
@example(
    data=b"1234", chunks=[3], limit=4, reset=False, ops=[("take_while", "isdigit"), ("at_end_of_input",)]
)
def test_bufreader_follows_the_model_and_stays_bounded(
    data: bytes, chunks: list[int], limit: int, reset: bool, ops: list[Any]
) -> None:
    check_sequence(data, chunks, limit, reset, ops, green=False)


@hypothesis_settings(ci_examples=40)
@given(
    data=inputs,
    chunks=st.lists(st.integers(16, 80), min_size=1, max_size=5),
    limit=limits,
    reset=st.booleans(),
    ops=operations,
)
def test_bufreader_over_a_suspending_source_follows_the_model(
    data: bytes, chunks: list[int], limit: int, reset: bool, ops: list[Any], gb_backend: str
) -> None:
    """The same, with a source that suspends the fiber before every read (as sockets do)."""
    gb.run(check_sequence, data, chunks, limit, reset, ops, True, backend=gb_backend)


def test_the_fuzzer_reaches_every_outcome() -> None:
    """Guard against a strategy that never hits the interesting cases."""
    before = Tally(**vars(TALLY))
    check_sequence(b"x" * 100 + b"\nend", [7], 16, False, [("line",)], green=False)
    check_sequence(b"abc", [1], 16, False, [("take", 5)], green=False)
    check_sequence(b"abc", [1], 16, True, [("take_all",)], green=False)
    assert TALLY.limits > before.limits and TALLY.eofs > before.eofs and TALLY.resets > before.resets


# -- pinned findings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(lambda r: r.line(), id="line"),
        pytest.param(lambda r: r.take_all(), id="take_all"),
        pytest.param(lambda r: r.take_while(bytes.isalpha), id="take_while"),
    ],
)
def test_a_request_refused_for_its_size_consumes_nothing(request_: Callable[[gb.BufReader], Any]) -> None:
    """After ``BufferLimitExceeded`` the input is intact, so a caller can recover (skip the
    over-long line, answer "431 Request Header Fields Too Large" and go on). Cancellation already
    works this way ("a cancelled call consumes nothing"); ``take(n > max_size)`` too. A refusal
    found by filling the buffer instead drops the one byte read past ``max_size`` to find out
    whether the input went on."""
    data = b"x" * 10 + b"\ntail"
    reader = gb.BufReader(flow.string_source(data), max_size=4)
    with pytest.raises(gb.BufferLimitExceeded):
        request_(reader)
    reader.skip(11)
    assert reader.take_all() == b"tail"
