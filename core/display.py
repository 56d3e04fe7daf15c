"""Text that is safe to put on an operator's terminal: the one place that decides what that means.

Mailing names, recipient names, file names and SMTP replies come from people and servers we do not
control. Written to a terminal as they are, an ESC or CSI (0x9b) starts an escape sequence (OSC 0
retitles the terminal, others move the cursor or rewrite what is on screen), CR and LF split or
overwrite a line, and Unicode direction overrides reorder the columns around them. `safe()` shows
every such character as a visible escape in Python's notation (`\\x1b`, `\\n`, `\\u202e`), so the
operator sees that it is there and what it is, and nothing reaches the terminal that it would act on.
The dashboard, the command line and the logs all go through it.

Input is refused earlier (`unsafe_character`): names with such characters never get into the store,
but rows written by older versions, SMTP replies and lease files still pass through `safe()`.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
import unicodedata
from typing import Any, TextIO

# C0 controls (TAB, LF and CR included), DEL and the C1 controls (0x9b is a one-byte CSI on many
# terminals), Unicode line and paragraph separators, the bidirectional embeddings, overrides and
# isolates (they reorder the text around them, "Trojan Source"), and lone surrogates (which cannot
# even be encoded for the terminal). Marks such as U+200E and joiners are left alone: they only
# affect the character next to them and are needed by scripts and emoji.
_DANGEROUS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
# Characters that show as nothing and join or separate nothing a script needs: a name made of
# them looks empty, and "Spring\u200b sale" looks like "Spring sale" beside it. Shown escaped,
# refused where a name identifies something (unsafe_character(..., invisible=True)).
_INVISIBLE = "\u00ad\u115f\u1160\u17b4\u17b5\u200b\u2060-\u2064\u206a-\u206f\u2800\u3164\ufeff\uffa0\U000e0000-\U000e007f"
_UNSAFE = re.compile(f"[{_DANGEROUS}{_INVISIBLE}]")
_REFUSED = re.compile(f"[{_DANGEROUS}]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe(text: object) -> str:
    """`text` with every character a terminal would act on shown as a visible escape.

    The common case (nothing to escape) is one regex search and returns the string itself, so
    the dashboard can call this for every cell it draws.
    """
    value = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_escape, value)


def one_line(text: object) -> str:
    """`text` as a list or a sentence shows it on one line: what `safe()` escapes shown escaped (a
    CR or LF in a name reads `\\r` or `\\n`, never as a space, so "a\\rb" and "a b" differ), then
    each run of the white space left (spaces, no-break spaces) as one space, none at the ends."""
    return " ".join(safe(text).split())


def shows_nothing(text: str) -> bool:
    """True when `text` would look empty: only spaces, marks, joiners and other characters that
    draw nothing of their own (U+200E, U+200D, U+00AD, a combining mark...)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Mn", "Me", "Cc") or _UNSAFE.match(c) for c in text)


def without_unsafe(text: str) -> str:
    """`text` without the characters `safe()` would escape: for a field being typed into."""
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub("", text)


def unsafe_character(text: str, *, allow: str = "", invisible: bool = False) -> str | None:
    """A description of the first character of `text` a terminal would act on ("U+001B at
    position 4"), or with `invisible` also the first that shows as nothing (which `safe()`
    escapes too), ignoring those in `allow`; None if there is none."""
    for match in (_UNSAFE if invisible else _REFUSED).finditer(text):
        if match.group() not in allow:
            return f"U+{ord(match.group()):04X} at position {match.start() + 1}"
    return None


# ---- logs -----------------------------------------------------------------------------------


class SafeFormatter(logging.Formatter):
    """Formats a record with its message (and any traceback, line by line) made safe: a log line
    is one line, whatever the message carries."""

    def format(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(record.__dict__)
        copy.message = safe(record.getMessage())
        if self.usesTime():
            copy.asctime = self.formatTime(copy, self.datefmt)
        formatted = self.formatMessage(copy)
        lines = [formatted]
        if record.exc_info:
            lines += _safe_traceback(record.exc_info)
        elif record.exc_text:
            lines.append(safe(record.exc_text))
        if record.stack_info:
            lines += [safe(line) for line in self.formatStack(record.stack_info).split("\n")]
        return "\n".join(lines)


# Pieces of a formatted traceback whose line breaks are the traceback's own; every other piece
# is an exception's message or note, whose line breaks came with the text and stay escaped.
_TRACEBACK_OWN = ("Traceback (most recent call last):", "  File ", "  [Previous line", "\nThe above exception",
                  "\nDuring handling")


def _safe_traceback(exc_info: Any) -> list[str]:
    lines: list[str] = []
    for piece in traceback.TracebackException(*exc_info[:3]).format():
        if piece.startswith(_TRACEBACK_OWN):
            lines += [safe(line) for line in piece.rstrip("\n").split("\n")]
        else:
            lines.append(safe(piece.removesuffix("\n")))
    return lines


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is emitted (like logging's last resort),
    so a front end that redirects stderr (Textual does) still receives the lines."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def install_safe_logging(level: int = logging.WARNING) -> logging.Handler:
    """Give the `mailtower` loggers one stderr handler that makes every record safe.

    Without it warnings go to logging's last-resort handler, which prints messages as they are.
    Calling it again returns the handler already installed.
    """
    logger = logging.getLogger("mailtower")
    for handler in logger.handlers:
        if isinstance(handler, _CurrentStderr):
            return handler
    handler = _CurrentStderr()
    handler.setLevel(level)
    handler.setFormatter(SafeFormatter("%(message)s"))
    logger.addHandler(handler)
    return handler
