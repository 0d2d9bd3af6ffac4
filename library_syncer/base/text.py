"""Names from elsewhere (the server's folders and files, archive members) made safe to print.

A name is whatever bytes the server chose: an ESC sequence can rewrite the operator's terminal, a
CR or newline can forge a second journal line, a bidi override can make `evil` read as `live`.
`printable()` is the one helper every message quoting such a name goes through.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode hands it (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with control, format and separator characters (and undecodable bytes) as escapes.

    Ordinary text, spaces and non-ASCII letters pass unchanged; only what `str.isprintable()`
    refuses is escaped (`\\x1b`, `\\r`, `\\u202e`, `\\xff` for an undecodable byte).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
