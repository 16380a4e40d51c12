"""The [MS-XCA] LZ77+Huffman decoder: hand-built streams, corrupt input, truncation, fuzzing.

There is no encoder in Ferry, so the streams here are built by `_Stream`, a minimal writer that follows the
spec's encoder: a fixed code given as 512 lengths, bits packed MSB-first into 16-bit little-endian words,
the two next words reserved ahead (that is where the decoder's 32-bit look-ahead comes from), and the
extra match-length bytes written at the current end of the output between those words.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.engines.sqlserver.xpress import XpressError, decompress_lz77_huffman

EOF = 256


def _table(lengths: list[int]) -> bytes:
    assert len(lengths) == 512
    return bytes(lengths[2 * i] | lengths[2 * i + 1] << 4 for i in range(256))


def _canonical_codes(lengths: list[int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length): codes assigned in (length, symbol) order, as the spec builds them."""
    codes: dict[int, tuple[int, int]] = {}
    code = 0
    for length in range(1, 16):
        for symbol in range(512):
            if lengths[symbol] == length:
                codes[symbol] = (code, length)
                code += 1
        code <<= 1
    return codes


class _Stream:
    """Writes blocks of one stream. Tokens: a byte literal, or (length, distance) for a match."""

    def __init__(self) -> None:
        self.out = bytearray()

    def block(self, lengths: list[int], tokens: list[int | tuple[int, int]], *, end: bool) -> None:
        codes = _canonical_codes(lengths)
        self.out += _table(lengths)
        slots = [len(self.out), len(self.out) + 2]
        self.out += bytes(4)
        acc = 0
        count = 0  # bits in acc, 0..16: a word is written only once a 17th bit arrives

        def bits(value: int, width: int) -> None:
            nonlocal acc, count
            acc = acc << width | value
            count += width
            while count > 16:
                word = acc >> (count - 16)
                acc &= (1 << (count - 16)) - 1
                count -= 16
                struct.pack_into("<H", self.out, slots[0], word)
                slots[0] = slots[1]
                slots[1] = len(self.out)
                self.out += bytes(2)

        def symbol(s: int) -> None:
            code, length = codes[s]
            bits(code, length)

        for token in tokens:
            if isinstance(token, int):
                symbol(token)
                continue
            length, distance = token
            dist_bits = distance.bit_length() - 1
            extra = length - 3
            symbol(256 + 16 * dist_bits + min(extra, 15))
            if extra >= 15:
                if extra - 15 < 255:
                    self.out.append(extra - 15)
                elif extra < 65536:
                    self.out += b"\xff" + struct.pack("<H", extra)
                else:
                    self.out += b"\xff\x00\x00" + struct.pack("<I", extra)
            if dist_bits:
                bits(distance - (1 << dist_bits), dist_bits)
        if end:
            symbol(EOF)
        struct.pack_into("<H", self.out, slots[0], (acc << (16 - count)) & 0xFFFF)


def _flat_lengths() -> list[int]:
    """Every symbol 9 bits long: 512 codes of 2**6 table entries each fill the 15-bit space exactly."""
    return [9] * 512


def _stream(tokens: list[int | tuple[int, int]]) -> bytes:
    s = _Stream()
    s.block(_flat_lengths(), tokens, end=True)
    return bytes(s.out)


# --- hand-built streams -------------------------------------------------------------------------------


def test_two_literals_with_an_8_bit_code_byte_for_byte() -> None:
    # 256 literals of 8 bits (bytes 0..127 = 0x88) is a complete code; the literal's code is its value,
    # and there is no end symbol, so decode without the end check. 'A','B' = 0x41,0x42 -> word 0x4142,
    # stored little-endian; then the second word the decoder reads ahead.
    data = bytes([0x88] * 128 + [0] * 128) + b"\x42\x41\x00\x00"
    assert decompress_lz77_huffman(data, 2, strict=False) == b"AB"


def test_literals_matches_and_end_symbol() -> None:
    tokens: list[int | tuple[int, int]] = [*b"abc", (6, 3), *b"xyz", (4, 7)]
    assert decompress_lz77_huffman(_stream(tokens), 16) == b"abcabcabcxyzcabc"


def test_overlapping_match_repeats_the_last_bytes() -> None:
    assert decompress_lz77_huffman(_stream([*b"ab", (11, 2)]), 13) == b"ab" * 6 + b"a"
    assert decompress_lz77_huffman(_stream([0x5A, (3, 1)]), 4) == b"ZZZZ"


@pytest.mark.parametrize("length", [3, 17, 18, 19, 272, 273, 274, 1000, 65538])
def test_match_length_encodings(length: int) -> None:
    # < 18: in the symbol; 18..272: one extra byte; up to 65538: 255 then a u16.
    out = decompress_lz77_huffman(_stream([0x41, (length, 1)]), length + 1)
    assert out == b"A" * (length + 1)


def test_match_length_u32_form() -> None:
    # Lengths beyond a u16 are written as 255, u16 0, then a u32; such a match also runs past the block end.
    assert decompress_lz77_huffman(_stream([0x41, (70000, 1)]), 70001) == b"A" * 70001


@pytest.mark.parametrize("distance", [1, 2, 3, 4, 7, 8, 255, 256, 4097, 32768, 65535])
def test_distances_with_extra_bits(distance: int) -> None:
    prefix = bytes((i * 7 + 3) & 0xFF for i in range(distance))
    tokens: list[int | tuple[int, int]] = [*prefix, (5, distance)]
    expected = prefix + (prefix[-distance:] * 5)[:5]
    assert decompress_lz77_huffman(_stream(tokens), len(expected)) == expected


def test_several_blocks_each_with_its_own_table() -> None:
    payload = os.urandom(65536 + 65536 + 1234)
    s = _Stream()
    s.block(_flat_lengths(), list(payload[:65536]), end=False)
    # A different (but still complete) code in the second block: literal lengths 8, nothing else.
    s.block([8] * 256 + [0] * 256, list(payload[65536:131072]), end=False)
    s.block(_flat_lengths(), list(payload[131072:]), end=True)
    assert decompress_lz77_huffman(bytes(s.out), len(payload)) == payload


def test_a_match_may_run_past_the_64k_block_end() -> None:
    # The block ends once 65,536 bytes or more are written: here 1 + 65,540 bytes in the first block.
    s = _Stream()
    s.block(_flat_lengths(), [0x42, (65540, 1)], end=False)
    s.block(_flat_lengths(), list(b"tail"), end=True)
    assert decompress_lz77_huffman(bytes(s.out), 65545) == b"B" * 65541 + b"tail"


def test_empty_output() -> None:
    assert decompress_lz77_huffman(b"", 0) == b""


# --- corrupt input ------------------------------------------------------------------------------------


def _expect(data: bytes, size: int, words: str) -> XpressError:
    with pytest.raises(XpressError) as info:
        decompress_lz77_huffman(data, size)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert 0 <= info.value.offset <= len(data)
    return info.value


def test_over_subscribed_code() -> None:
    _expect(bytes([0x11] * 256) + bytes(8), 4, "over-subscribed")


def test_incomplete_code() -> None:
    lengths = [0] * 512
    lengths[65] = 1  # one code of one bit covers half of the space
    _expect(_table(lengths) + bytes(8), 4, "incomplete")


def test_table_with_no_codes() -> None:
    err = _expect(bytes(256) + bytes(8), 4, "no codes")
    assert err.offset == 0


def test_distance_before_the_start() -> None:
    err = _expect(_stream([*b"ab", (3, 3)]), 5, "reaches before the start")
    assert "input byte" in str(err)


def test_output_overrun() -> None:
    _expect(_stream([*b"ab", (10, 1)]), 5, "overruns the uncompressed size 5")


def test_bad_long_length() -> None:
    s = _Stream()
    s.block(_flat_lengths(), [0x41, (20, 1)], end=True)
    data = bytearray(s.out)
    # Two 9-bit symbols fill the first word and reserve a third, so the extra length byte follows the
    # table and three words. Make it 255 followed by a u16 of 3, below the legal minimum of 15.
    at = 256 + 6
    assert data[at] == 20 - 3 - 15
    data[at : at + 1] = b"\xff\x03\x00"
    _expect(bytes(data), 21, "bad long match length 3")


def test_wrong_size_is_caught_by_the_end_check() -> None:
    data = _stream(list(b"hello world"))
    _expect(data, 10, "no end-of-stream symbol")
    _expect(data + b"\x00\x00", 11, "but the input has")
    with pytest.raises(XpressError):
        decompress_lz77_huffman(data, 12)
    assert decompress_lz77_huffman(data + b"junk", 10, strict=False) == b"hello worl"


def test_negative_size() -> None:
    _expect(b"", -1, "negative")


def test_every_truncation_fails_cleanly() -> None:
    data = _stream([*b"abcdefgh", (40, 8), *b"xyz", (300, 3), (20, 1)])
    size = len(decompress_lz77_huffman(data, 371))
    for cut in range(len(data)):
        with pytest.raises(XpressError) as info:
            decompress_lz77_huffman(data[:cut], size)
        assert info.value.offset <= cut


# --- fuzzing ------------------------------------------------------------------------------------------


def _decode_or_xpress_error(data: bytes, size: int, strict: bool = True) -> None:
    try:
        out = decompress_lz77_huffman(data, size, strict=strict)
    except XpressError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert len(out) == size


_FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(data=st.binary(max_size=3000), size=st.integers(0, 70000), strict=st.booleans())
def test_random_bytes_never_raise_anything_else(data: bytes, size: int, strict: bool) -> None:
    _decode_or_xpress_error(data, size, strict)


@_FUZZ
@given(
    table=st.lists(st.integers(0, 15), min_size=512, max_size=512),
    body=st.binary(min_size=4, max_size=2000),
    size=st.integers(1, 70000),
)
def test_random_tables_never_raise_anything_else(table: list[int], body: bytes, size: int) -> None:
    _decode_or_xpress_error(_table(table) + body, size)


_SAMPLE = _stream([*b"The quick brown fox ", (20, 20), *b"jumps", (300, 25), (70, 1), *range(256)])
_SAMPLE_SIZE = 20 + 20 + 5 + 300 + 70 + 256


@_FUZZ
@given(flips=st.lists(st.integers(0, len(_SAMPLE) * 8 - 1), min_size=1, max_size=4))
def test_bit_flipped_streams_never_raise_anything_else(flips: list[int]) -> None:
    data = bytearray(_SAMPLE)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    _decode_or_xpress_error(bytes(data), _SAMPLE_SIZE)


def _real_chunks() -> list[tuple[bytes, int]]:
    """A few chunks of a real compressed backup, when the corpus is present (the files stay outside)."""
    env = os.environ.get("FERRY_SQLSERVER_CORPUS")
    roots = [Path(env)] if env else []
    roots.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "sqlserver-backups")
    for root in roots:
        path = root / "more" / "compressed-striped-2016" / "multiFilesBackup1.bak"
        if path.is_file():
            raw = path.read_bytes()
            chunks = []
            pos = 0x1E0
            while len(chunks) < 4 and raw[pos] == 0x21:
                units, count = raw[pos + 1], int.from_bytes(raw[pos + 2 : pos + 4], "little")
                chunks.append((raw[pos + 28 : pos + 28 + count], units * 512))
                pos += 28 + count
                if raw[pos] == 0x24:  # padding up to the first filemark, then the filemark itself
                    pos = (pos // 4096 + 2) * 4096
            return chunks
    return []


_CHUNKS = _real_chunks()
needs_corpus = pytest.mark.skipif(
    not _CHUNKS,
    reason="SQL Server corpus not found: set FERRY_SQLSERVER_CORPUS or put it at ../shared/sqlserver-backups",
)


@needs_corpus
def test_real_chunks_decode_to_mtf() -> None:
    first, size = _CHUNKS[0]
    assert decompress_lz77_huffman(first, size)[:4] == b"TAPE"
    second, size = _CHUNKS[1]
    assert decompress_lz77_huffman(second, size)[:4] == b"SSET"


@needs_corpus
@_FUZZ
@given(which=st.integers(0, 3), flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=3))
def test_bit_flipped_real_chunks_never_raise_anything_else(which: int, flips: list[int]) -> None:
    chunk, size = _CHUNKS[which % len(_CHUNKS)]
    data = bytearray(chunk)
    for bit in flips:
        bit %= len(data) * 8
        data[bit // 8] ^= 1 << (bit % 8)
    _decode_or_xpress_error(bytes(data), size)


@needs_corpus
def test_real_chunk_truncations_fail_cleanly() -> None:
    chunk, size = _CHUNKS[2]
    for cut in range(0, len(chunk), max(1, len(chunk) // 200)):
        with pytest.raises(XpressError):
            decompress_lz77_huffman(chunk[:cut], size)


def test_a_64k_chunk_of_literals() -> None:
    # Worst case for a table-driven decoder: 65,536 literals, one loop turn each (its speed is measured by
    # bench/scan.py, not asserted here: these machines are shared).
    payload = os.urandom(65536)
    assert decompress_lz77_huffman(_stream(list(payload)), 65536) == payload
