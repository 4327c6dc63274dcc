"""UTF-8 checks on client bytes, failing the way PostgreSQL's pg_verify_mbstr does (22021)."""

from __future__ import annotations

from pgshard.protocol.errors import CharacterNotInRepertoire


def _mblen(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte announces, as pg_utf_mblen counts it."""
    if lead < 0x80:
        return 1
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    if lead & 0xF8 == 0xF0:
        return 4
    return 1


def invalid_byte_sequence(data: bytes, at: int) -> CharacterNotInRepertoire:
    """PostgreSQL's error for the bad sequence starting at offset at: its bytes as 0x.. ."""
    seq = data[at:at + _mblen(data[at])]
    shown = " ".join(f"0x{b:02x}" for b in seq)
    return CharacterNotInRepertoire(f'invalid byte sequence for encoding "UTF8": {shown}')


def decode_utf8(data: bytes) -> str:
    """data as text; invalid UTF-8 or a NUL byte (PostgreSQL text cannot hold one) is 22021."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        nul = data.find(b"\0", 0, exc.start)
        raise invalid_byte_sequence(data, exc.start if nul < 0 else nul) from None
    if "\0" in text:
        raise invalid_byte_sequence(data, data.find(b"\0"))
    return text


def check_utf8(data: bytes) -> bytes:
    """data itself when it is valid UTF-8 text for PostgreSQL, else 22021."""
    if data.isascii():
        if b"\0" in data:
            raise invalid_byte_sequence(data, data.find(b"\0"))
        return data
    decode_utf8(data)
    return data
