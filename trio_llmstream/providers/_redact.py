"""Removing the API key from text the upstream sent, before it reaches any error.

The library never prints the key itself, but proxies, gateways and misconfigured servers echo
request headers back (``Incorrect API key provided: Bearer sk-...``) in error bodies, in-stream
error events and response headers. A provider owns its key, so it scrubs every
upstream-supplied string at one boundary: each exception leaving ``run_attempt`` passes through
:meth:`Redactor.scrub_exception` (its message, ``args``, notes, every string or JSON-like
attribute such as ``.body``, and the same for each exception of its ``__cause__`` /
``__context__`` chain). Everything built later from that exception — retry logs,
``RetriesExhaustedError``, metrics, the journal's terminal entry, the relay's ``end`` event,
``chat``'s error line — then only ever sees redacted text.

What counts as the key, for a key of at least :data:`MIN_SECRET_LENGTH` characters: the key
itself (so ``Bearer <key>`` becomes ``Bearer [REDACTED]``), matched case-insensitively (a
gateway may lower-case a header it quotes), and the forms an echo commonly takes: URL-encoded
(``%2F`` for ``/``, ``+`` or ``%20`` for a space), JSON-escaped (``\\/``, ``\\uXXXX``) and
HTML-escaped. Shorter keys (``EMPTY``, ``ollama``: the placeholders local servers accept) are no
secret worth destroying messages for — replacing every occurrence of a common word would make
errors unreadable — so they are redacted only where they follow ``Bearer``, i.e. where the
header itself is quoted.

Pure and synchronous: no cancellation behaviour.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import urllib.parse
from typing import Final

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor"]

REDACTED: Final = "[REDACTED]"
MIN_SECRET_LENGTH: Final = 8
# Exception chains are short; a bound keeps a pathological cycle of causes from looping.
_MAX_CHAIN = 32
# JSON-like values nest; deeper than this is not something we built from an error body.
_MAX_DEPTH = 64


def _forms(secret: str) -> set[str]:
    """The spellings of ``secret`` an echo is likely to use."""
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        html.escape(secret),
    }
    # Every character as \uXXXX: what some JSON encoders emit for "unsafe" characters.
    forms.add("".join(f"\\u{ord(c):04x}" for c in secret if ord(c) < 0x10000))
    return {form for form in forms if form}


class Redactor:
    """Replaces one secret, in the spellings an echo may use, by :data:`REDACTED`.

    ``Redactor(None)`` (or an empty key) changes nothing. The redactor never stores anything
    but the key it was given and a compiled pattern; its ``repr`` does not show either.
    """

    __slots__ = ("_bytes_pattern", "_bytes_replacement", "_pattern", "_replacement")

    def __init__(self, secret: str | None) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._bytes_pattern: re.Pattern[bytes] | None = None
        self._replacement = REDACTED
        self._bytes_replacement = REDACTED.encode()
        if not secret:
            return
        if len(secret) >= MIN_SECRET_LENGTH:
            # Longest first, so a longer spelling is not half-replaced by a shorter one.
            alternatives = sorted(_forms(secret), key=len, reverse=True)
            source = "|".join(re.escape(form) for form in alternatives)
        else:
            # Only the key after "Bearer" is replaced; the spacing before it is kept.
            source = r"(?<=bearer)((?:\s|%20|\+)+)" + re.escape(secret)
            self._replacement = r"\1" + REDACTED
            self._bytes_replacement = self._replacement.encode()
        self._pattern = re.compile(source, re.IGNORECASE)
        try:
            self._bytes_pattern = re.compile(source.encode("utf-8"), re.IGNORECASE)
        except (UnicodeEncodeError, re.error):  # pragma: no cover - a key of lone surrogates
            self._bytes_pattern = None

    def __repr__(self) -> str:
        return f"Redactor(active={self._pattern is not None})"

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        """``value`` with every occurrence of the secret replaced."""
        pattern = self._pattern
        if pattern is None:
            return value
        return pattern.sub(self._replacement, value)

    def data(self, value: bytes) -> bytes:
        """``value`` (bytes) with every occurrence of the secret replaced."""
        pattern = self._bytes_pattern
        if pattern is None or self._pattern is None:
            return value
        out = pattern.sub(self._bytes_replacement, value)
        # The bytes pattern only knows UTF-8 spellings; decode-and-check catches the rest.
        text = out.decode("utf-8", "surrogateescape")
        scrubbed = self.text(text)
        return out if scrubbed == text else scrubbed.encode("utf-8", "surrogateescape")

    def value(self, value: object, _depth: int = 0) -> object:
        """A copy of a JSON-like value (str, bytes, dict, list, tuple) with the secret
        replaced in every string, keys included; other values are returned unchanged."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes | bytearray):
            return self.data(bytes(value))
        if _depth >= _MAX_DEPTH:
            # Deeper than any error body we parse: summarised rather than walked.
            return REDACTED if isinstance(value, dict | list | tuple) else value
        if isinstance(value, dict):
            return {
                self.value(k, _depth + 1): self.value(v, _depth + 1) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.value(v, _depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v, _depth + 1) for v in value)
        return value

    def scrub_exception(self, exc: BaseException) -> BaseException:
        """Redact ``exc`` in place, with its ``__cause__``/``__context__`` chain; return it.

        Rewrites ``args``, ``__notes__`` and every instance attribute holding a string, bytes or
        a JSON-like container (``message``, ``body``, ``type``, ``code``, ``request_id``...).
        Other attributes (an httpx request or response, say) are left alone: httpx masks the
        Authorization header in their reprs, and they are not upstream text.
        """
        if self._pattern is None:
            return exc
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo and len(seen) < _MAX_CHAIN:
            current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            self._scrub_one(current)
            for linked in (current.__cause__, current.__context__):
                if linked is not None:
                    todo.append(linked)
            if isinstance(current, BaseExceptionGroup):
                todo.extend(current.exceptions)
        return exc

    def _scrub_one(self, exc: BaseException) -> None:
        with contextlib.suppress(AttributeError, TypeError):  # exotic exception types
            exc.args = tuple(self.value(arg) for arg in exc.args)
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [self.text(n) if isinstance(n, str) else n for n in notes]
        attributes = getattr(exc, "__dict__", None)
        if not attributes:
            return
        for name, attr in list(attributes.items()):
            if name == "__notes__":
                continue
            if isinstance(attr, str | bytes | bytearray | dict | list | tuple):
                with contextlib.suppress(AttributeError, TypeError):  # a read-only attribute
                    setattr(exc, name, self.value(attr))
