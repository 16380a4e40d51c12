"""Decoder for Microsoft's "LZ77+Huffman" (XPRESS Huffman) format, as published in [MS-XCA].

Compressed SQL Server backups store their MTF stream in chunks compressed this way. The format, from the
open specification:

- The stream is a run of blocks. Each block opens with a 256-byte table holding 512 4-bit code lengths
  (low nibble = even symbol, high nibble = odd symbol; 0 = unused). Symbols 0..255 are literals; symbol
  256 + 16*b + n is a match whose distance has b extra bits and whose length code is n.
- The codes are canonical Huffman codes of at most 15 bits, read most-significant bit first from a
  32-bit register that is refilled with 16-bit little-endian words whenever fewer than 16 bits remain.
- A match with length code 15 takes its length from whole bytes read at the current input position
  (between the 16-bit words): one byte, or 255 and then a u16, or 255, u16 0 and then a u32.
  The distance is (1 << b) plus the next b bits.
- A block ends once it has written 65,536 bytes or more (a match may run past that mark); the bits left
  in the register are dropped and the next block's table starts at the next unread input byte.

The decoder works on plain ints with one lookup table per block, indexed by the next W bits where W is
the block's longest code (at most 15), so each symbol costs one lookup and a few shifts. Every input read
is bounds-checked by catching IndexError at the one place it can happen, and every symbol writes at least
one byte, so hostile input ends either in success or in XpressError after at most `uncompressed_size` symbols.
"""

from __future__ import annotations

from array import array

__all__ = ["XpressError", "decompress_lz77_huffman"]

_TABLE_BYTES = 256
_SYMBOLS = 512
_BLOCK_OUTPUT = 65536
_MASK32 = 0xFFFFFFFF
_LOW_NIBBLE = bytes(b & 15 for b in range(256))
_HIGH_NIBBLE = bytes(b >> 4 for b in range(256))


class XpressError(ValueError):
    """Corrupt or truncated LZ77+Huffman input. `offset` is the input byte offset where it went wrong."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _build_lookup(data: bytes, start: int) -> tuple[array[int], int]:
    """The lookup table of the block whose length table begins at `start`, and the shift that takes its
    index, the next W bits (W the block's longest code), from the top of the 32-bit register.

    Each entry is `symbol << 4 | code_length`. Canonical codes in (length, symbol) order fill the table
    from index 0 upwards, a code of length L covering 2**(W-L) consecutive entries; so running past the
    end means the code is over-subscribed and stopping short means it is incomplete. Both are corrupt
    input: no decoder could tell what an unassigned bit pattern means.

    A backup's chunks are small, with codes of 7 to 9 bits, and building the table cost more than
    decoding them: so the table is W bits wide rather than 15, and it is filled a code length at a time,
    by slice assignments (one per symbol, or one per repeat, whichever is fewer), not symbol by symbol.
    """
    table = bytes(data[start : start + _TABLE_BYTES])
    if len(table) < _TABLE_BYTES:
        raise IndexError  # the caller checked the length; kept for direct calls
    lengths = bytearray(_SYMBOLS)
    lengths[0::2] = table.translate(_LOW_NIBBLE)
    lengths[1::2] = table.translate(_HIGH_NIBBLE)
    width = max(lengths)
    if width == 0:
        raise XpressError(f"Huffman table at input byte {start} has no codes", start)
    size = 1 << width
    # Canonical order: by code length, then by symbol (a stable sort keeps symbols in increasing order).
    order = sorted(range(_SYMBOLS), key=lengths.__getitem__)
    lookup = array("H", bytes(2 * size))
    pos, i = 0, lengths.count(0)
    for length in range(1, width + 1):
        count = lengths.count(length)
        if not count:
            continue
        entries = array("H", [symbol << 4 | length for symbol in order[i : i + count]])
        i += count
        span = 1 << (width - length)
        end = pos + count * span
        if end > size:
            raise XpressError(f"over-subscribed Huffman code in the table at input byte {start}", start)
        if span == 1:
            lookup[pos:end] = entries
        elif count < span:
            for n in range(count):
                lookup[pos + n * span : pos + (n + 1) * span] = entries[n : n + 1] * span
        else:
            for j in range(span):
                lookup[pos + j : end : span] = entries
        pos = end
    if pos != size:
        raise XpressError(f"incomplete Huffman code in the table at input byte {start}", start)
    return lookup, 32 - width


def decompress_lz77_huffman(data: bytes, uncompressed_size: int, *, strict: bool = True) -> bytes:
    """Decode one LZ77+Huffman stream that holds exactly `uncompressed_size` bytes.

    With `strict` (the default) the stream must end as [MS-XCA] says a stream ends: the symbol after the
    last output byte is 256 and reading it uses up the input exactly. Every chunk of the SQL Server samples
    ends so, and the check catches a wrong size or trailing damage that would otherwise decode silently.
    With `strict=False` anything after the last output byte is ignored.

    Raises XpressError, and nothing else, for any input that does not decode to exactly that many bytes.
    """
    if uncompressed_size < 0:
        raise XpressError(f"negative uncompressed size {uncompressed_size}", 0)
    n = len(data)
    out = bytearray(uncompressed_size)
    o = 0  # bytes written
    pos = 0  # next unread input byte
    while o < uncompressed_size:
        if pos + _TABLE_BYTES + 4 > n:
            raise XpressError(
                f"input ends early at byte {n}: a block needs a {_TABLE_BYTES}-byte table and "
                f"4 bytes of bits from byte {pos}, with {uncompressed_size - o} bytes left to write",
                n,
            )
        table_at = pos
        lookup, shift = _build_lookup(data, pos)
        pos += _TABLE_BYTES
        bits = (data[pos] | data[pos + 1] << 8) << 16 | data[pos + 2] | data[pos + 3] << 8
        pos += 4
        extra = 16  # valid bits in `bits` beyond the top 16
        stop = min(o + _BLOCK_OUTPUT, uncompressed_size)
        try:
            while o < stop:
                entry = lookup[bits >> shift]
                length = entry & 15
                bits = (bits << length) & _MASK32
                extra -= length
                if extra < 0:
                    bits |= (data[pos] | data[pos + 1] << 8) << -extra
                    extra += 16
                    pos += 2
                symbol = entry >> 4
                if symbol < 256:
                    out[o] = symbol
                    o += 1
                    continue
                # A match. Symbol 256 is also the end-of-stream marker, but only when the output is
                # complete, and the loop has stopped before then; elsewhere it is length 3, distance 1.
                symbol -= 256
                match_len = symbol & 15
                dist_bits = symbol >> 4
                if match_len == 15:
                    match_len = data[pos]
                    pos += 1
                    if match_len == 255:
                        match_len = data[pos] | data[pos + 1] << 8
                        pos += 2
                        if match_len == 0:
                            match_len = int.from_bytes(data[pos : pos + 4], "little")
                            if pos + 4 > n:
                                raise IndexError
                            pos += 4
                        if match_len < 15:
                            raise XpressError(
                                f"bad long match length {match_len} before input byte {pos}", pos
                            )
                        match_len -= 15
                    match_len += 15
                match_len += 3
                if dist_bits:
                    dist = (bits >> (32 - dist_bits)) | (1 << dist_bits)
                    bits = (bits << dist_bits) & _MASK32
                    extra -= dist_bits
                    if extra < 0:
                        bits |= (data[pos] | data[pos + 1] << 8) << -extra
                        extra += 16
                        pos += 2
                else:
                    dist = 1
                if dist > o:
                    raise XpressError(
                        f"match distance {dist} reaches before the start of the output "
                        f"(output byte {o}, input byte {pos})",
                        pos,
                    )
                end = o + match_len
                if end > uncompressed_size:
                    raise XpressError(
                        f"match of {match_len} bytes at output byte {o} overruns the uncompressed "
                        f"size {uncompressed_size} (input byte {pos})",
                        pos,
                    )
                src = o - dist
                if dist >= match_len:
                    out[o:end] = out[src : src + match_len]
                else:
                    # Overlapping copy: the match repeats the last `dist` bytes.
                    pattern = out[src:o]
                    out[o:end] = (pattern * (match_len // dist + 1))[:match_len]
                o = end
            if strict and o == uncompressed_size:
                # [MS-XCA]'s end condition: the next symbol is 256 and reading it uses up the input.
                entry = lookup[bits >> shift]
                extra -= entry & 15
                if extra < 0:
                    pos += 2
                if pos > n:
                    raise XpressError(f"input ends early at byte {n}, inside the end-of-stream symbol", n)
                if entry >> 4 != 256:
                    raise XpressError(
                        f"no end-of-stream symbol after the last output byte: symbol {entry >> 4} "
                        f"(input byte {pos})",
                        pos,
                    )
                if pos != n:
                    raise XpressError(f"the stream ends at input byte {pos} but the input has {n} bytes", pos)
        except IndexError:
            raise XpressError(
                f"input ends early at byte {n} inside the block whose table is at byte {table_at} "
                f"({uncompressed_size - o} of {uncompressed_size} bytes left to write)",
                n,
            ) from None
    return bytes(out)
