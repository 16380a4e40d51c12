"""The format document, section 8 ("Compressed backups: the `MSSQLBAK` container"): each chunk of a
compressed backup is one LZ77+Huffman block of Microsoft's open specification [MS-XCA] (2.2, "LZ77+Huffman
Compression Algorithm"; decoding in 2.2.4 / 2.2.5):
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-xca/

A block starts with 256 bytes holding the Huffman code lengths of its 512 symbols (4 bits each, the low
nibble first). Symbols below 256 are literal bytes; a symbol s >= 256 is a match whose length is
(s - 256) % 16 (15: more length follows in the byte stream) and whose offset has (s - 256) // 16 bits.
Written for the model only: small and slow is fine, it decodes a few header chunks per file.
"""

from __future__ import annotations

from tests.mssql_model.formaterrors import NotABackup

_TABLE_BITS = 15


def _decoding_table(lengths: list[int]) -> list[int]:
    """Canonical Huffman: codes are given in order of (length, symbol). Each entry of the 2^15 table is
    symbol << 4 | length for every 15-bit prefix starting with that symbol's code."""
    table = [-1] * (1 << _TABLE_BITS)
    code = 0
    for length in range(1, _TABLE_BITS + 1):
        for symbol in range(512):
            if lengths[symbol] != length:
                continue
            span = 1 << (_TABLE_BITS - length)
            start = code << (_TABLE_BITS - length)
            if start + span > len(table):
                raise NotABackup("compressed chunk: its Huffman code lengths are not a prefix code")
            table[start : start + span] = [symbol << 4 | length] * span
            code += 1
        code <<= 1
    return table


def decompress(data: bytes, size: int) -> bytes:
    """Decode one LZ77+Huffman stream to exactly `size` bytes (each 64 KiB of output has its own table)."""
    out = bytearray()
    pos = 0

    def u16(at: int) -> int:
        return data[at] | data[at + 1] << 8 if at + 1 < len(data) else 0

    while len(out) < size:
        if pos + 256 > len(data):
            raise NotABackup("compressed chunk: it ends inside its Huffman table")
        lengths = []
        for byte in data[pos : pos + 256]:
            lengths += [byte & 0x0F, byte >> 4]
        table = _decoding_table(lengths)
        pos += 256
        bits = (u16(pos) << 16) | u16(pos + 2)
        pos += 4
        extra = 16
        block_end = min(size, len(out) + 65536)

        def consume(count: int) -> None:
            nonlocal bits, extra, pos
            bits = (bits << count) & 0xFFFFFFFF
            extra -= count
            if extra < 0:
                bits |= u16(pos) << (-extra)
                extra += 16
                pos += 2

        while len(out) < block_end:
            entry = table[bits >> (32 - _TABLE_BITS)]
            if entry < 0:
                raise NotABackup("compressed chunk: a bit pattern no Huffman code has")
            symbol, length = entry >> 4, entry & 0x0F
            consume(length)
            if symbol < 256:
                out.append(symbol)
                continue
            symbol -= 256
            match_length = symbol & 0x0F
            offset_bits = symbol >> 4
            if match_length == 15:
                if pos >= len(data):
                    raise NotABackup("compressed chunk: a match length beyond its data")
                match_length = data[pos]
                pos += 1
                if match_length == 255:
                    match_length = u16(pos)
                    pos += 2
                    if match_length == 0:
                        match_length = int.from_bytes(data[pos : pos + 4], "little")
                        pos += 4
                    if match_length < 15:
                        raise NotABackup("compressed chunk: a match length below 15 in its long form")
                    match_length -= 15
                match_length += 15
            match_length += 3
            offset = (bits >> (32 - offset_bits) if offset_bits else 0) + (1 << offset_bits)
            consume(offset_bits)
            if offset > len(out):
                raise NotABackup("compressed chunk: a match reaching before the start of its data")
            start = len(out) - offset
            for i in range(match_length):
                out.append(out[start + i])
    return bytes(out[:size])
