"""gb.BufReader and gb.BufWriter: Eio's Buf_read / Buf_write semantics, limits and errors."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import greenbridge as gb
from greenbridge import flow

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


class ChunkedSource(flow.Source):
    """Delivers the input in the given pieces (one per read), recording each read's size."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self.chunks = [c for c in chunks if c]
        self.reads: list[int] = []

    def read_into(self, buf: WriteableBuffer) -> int:
        out = memoryview(buf).cast("B")
        self.reads.append(len(out))
        if not self.chunks:
            return 0
        chunk = self.chunks[0]
        n = min(len(chunk), len(out))
        out[:n] = chunk[:n]
        if n == len(chunk):
            self.chunks.pop(0)
        else:
            self.chunks[0] = chunk[n:]
        return n


class CountingSink(flow.Sink):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: ReadableBuffer, /) -> int:
        self.writes.append(bytes(data))
        return len(memoryview(data))


def reader(*chunks: bytes, max_size: int = 1024) -> gb.BufReader:
    return gb.BufReader(ChunkedSource(list(chunks)), max_size=max_size)


def test_line_strips_lf_and_crlf_across_chunks() -> None:
    r = reader(b"GET / HT", b"TP/1.1\r", b"\nHost: x\n\nbody")
    assert r.line() == b"GET / HTTP/1.1"
    assert r.line() == b"Host: x"
    assert r.line() == b""
    assert r.line() == b"body"  # the last line may lack its newline
    with pytest.raises(EOFError):
        r.line()


def test_lines_iterates_to_the_end() -> None:
    assert list(reader(b"a\nb\r\n", b"c").lines()) == [b"a", b"b", b"c"]
    assert list(reader(b"a\n").lines()) == [b"a"]
    assert list(reader().lines()) == []


def test_take_take_all_skip_peek() -> None:
    r = reader(b"abc", b"defgh", b"ij")
    assert r.peek_char() == b"a"
    assert r.take(2) == b"ab"
    r.skip(4)
    assert r.peek_char() == b"g"
    assert r.take_all() == b"ghij"
    assert r.peek_char() is None
    assert r.at_end_of_input()
    with pytest.raises(EOFError):
        r.take(1)


def test_take_past_the_end_is_an_eof_error() -> None:
    r = reader(b"abc")
    with pytest.raises(EOFError):
        r.take(5)
    with pytest.raises(EOFError):
        reader(b"abc").skip(4)


def test_take_while() -> None:
    r = reader(b"123", b"45abc")
    assert r.take_while(bytes.isdigit) == b"12345"
    assert r.take_while(bytes.isdigit) == b""
    assert r.take_while(bytes.isalpha) == b"abc"
    assert r.take_while(bytes.isalpha) == b""  # at end of input: empty, no error


def test_at_end_of_input_does_not_consume() -> None:
    r = reader(b"x")
    assert not r.at_end_of_input()
    assert r.take(1) == b"x"
    assert r.at_end_of_input()


def test_buffer_limit_on_a_line_that_never_ends() -> None:
    src = ChunkedSource([b"x" * 100] * 100)
    r = gb.BufReader(src, max_size=256)
    with pytest.raises(gb.BufferLimitExceeded):
        r.line()
    # The guard held before memory grew: never more than max_size bytes buffered or asked for.
    assert r.buffered() <= 256
    assert max(src.reads) <= 256


def test_buffer_limit_on_take_and_take_all() -> None:
    with pytest.raises(gb.BufferLimitExceeded):
        reader(b"x" * 10, max_size=8).take(9)
    with pytest.raises(gb.BufferLimitExceeded):
        reader(b"x" * 10, max_size=8).take_all()
    with pytest.raises(gb.BufferLimitExceeded):
        reader(b"1" * 10, max_size=8).take_while(bytes.isdigit)
    assert reader(b"x" * 8, max_size=8).take_all() == b"x" * 8
    assert reader(b"abcdefg\n", max_size=8).line() == b"abcdefg"
    reader(b"x" * 100, max_size=8).skip(100)  # skipping needs no buffer


def test_buffer_limit_exceeded_is_a_value_error() -> None:
    assert issubclass(gb.BufferLimitExceeded, ValueError)
    with pytest.raises(ValueError):
        gb.BufReader(flow.string_source(b""), max_size=0)


def test_bufreader_is_a_source_buffered_bytes_first() -> None:
    r = reader(b"header\nbo", b"dy and more")
    assert r.line() == b"header"
    out = bytearray()
    assert flow.copy(r, flow.buffer_sink(out)) == len(b"body and more")
    assert out == b"body and more"


def test_bufreader_close_leaves_the_source_open() -> None:
    src = flow.string_source(b"abc")
    with gb.BufReader(src) as r:
        assert r.take(1) == b"a"
    assert not src.closed
    with pytest.raises(gb.ClosedResourceError):
        r.line()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=1000)),
)
def test_lines_are_independent_of_chunking(lines: list[bytes], crlf: bool, cuts: list[int]) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = b"".join(line + end for line in lines)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert list(reader(*chunks, max_size=64).lines()) == lines


# -- BufWriter ---------------------------------------------------------------------------------------


def test_bufwriter_batches_small_writes() -> None:
    sink = CountingSink()
    w = gb.BufWriter(sink, buffer_size=10)
    for piece in (b"abc", b"def", b"gh"):
        assert w.write(piece) == len(piece)
    assert sink.writes == []
    w.write(b"ijk")  # fills the buffer: one write of everything
    assert sink.writes == [b"abcdefghijk"]
    w.write(b"x")
    w.flush()
    assert sink.writes == [b"abcdefghijk", b"x"]
    w.flush()  # nothing buffered: no empty write
    assert len(sink.writes) == 2


def test_bufwriter_large_write_goes_straight_through() -> None:
    sink = CountingSink()
    w = gb.BufWriter(sink, buffer_size=4)
    w.write(b"0123456789")
    assert sink.writes == [b"0123456789"]


def test_bufwriter_context_manager_flushes_on_success_only() -> None:
    sink = CountingSink()
    with gb.BufWriter(sink) as w:
        w.write(b"kept")
    assert sink.writes == [b"kept"]
    assert not sink.closed
    with pytest.raises(gb.ClosedResourceError):
        w.write(b"late")
    sink2 = CountingSink()
    with pytest.raises(RuntimeError), gb.BufWriter(sink2) as w2:
        w2.write(b"half a message")
        raise RuntimeError("failed mid-message")
    assert sink2.writes == []
