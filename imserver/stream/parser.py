"""A restricted, bounded XML stream parser for XMPP (RFC 6120 §11).

It replaces ``twisted.words.xish.domish.ExpatElementStream``, which expands DTD
entities, accepts comments and processing instructions, and lets one stanza
grow without bound. The event interface and the ``domish.Element`` objects it
produces are the same, so the rest of the server cannot tell the difference.

Stream error conditions used (RFC 6120 §4.9.3):

* ``restricted-xml``: a DOCTYPE or any DTD declaration, an entity reference
  other than the five predefined ones, a comment, or a processing instruction
  (the XML declaration at the very start is allowed). These are refused before
  expat expands or even records anything.
* ``unsupported-encoding``: an XML declaration naming an encoding other than
  UTF-8, or a stream starting with a UTF-16/UTF-32 signature (a byte-order mark
  or NUL bytes). Per §4.9.3.22 and §11.6 this condition is about the peer
  *using another encoding* for the stream.
* ``not-well-formed``: anything else expat rejects, including byte sequences
  that are not valid UTF-8 in a stream that is otherwise UTF-8. Such bytes are
  malformed input rather than evidence of another encoding, and §4.9.3.13
  covers all violations of XML well-formedness.
* ``policy-violation``: a configured limit (``ParserLimits``) was exceeded.
* ``internal-server-error``: an event handler raised; expat cannot resume after
  that, so the stream is dead too.

Expat 2.5 rescans an unfinished token from its start each time more bytes
arrive, so a long start tag dribbled in one byte at a time costs quadratic CPU.
Once an unfinished token passes ``_HOLD_THRESHOLD`` bytes this class keeps new
bytes back until they double it or close the tag, which keeps the total work
linear without delaying any event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from twisted.words.xish.domish import Element

__all__ = ["ParserLimits", "RestrictedElementStream", "StreamViolation"]

_NS_SEPARATOR = " "

# Unfinished tokens shorter than this are handed to expat as they come; the
# rescanning they cost is no more than the per-call overhead of parse().
_HOLD_THRESHOLD = 1024

# Inside a tag only these bytes change the scanner's state.
_TAG_STOP = re.compile(rb"[>'\"]")


def _error_codes(*names: str) -> frozenset[int]:
    """Numeric expat error codes for the given names that this expat knows."""
    errors = expat.errors
    return frozenset(errors.codes[getattr(errors, n)] for n in names if hasattr(errors, n))


_ENTITY_ERRORS = _error_codes(
    "XML_ERROR_UNDEFINED_ENTITY",
    "XML_ERROR_RECURSIVE_ENTITY_REF",
    "XML_ERROR_ASYNC_ENTITY",
    "XML_ERROR_BINARY_ENTITY_REF",
    "XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF",
    "XML_ERROR_EXTERNAL_ENTITY_HANDLING",
    "XML_ERROR_NOT_STANDALONE",
    "XML_ERROR_ENTITY_DECLARED_IN_PE",
    "XML_ERROR_AMPLIFICATION_LIMIT_BREACH",
)
_ENCODING_ERRORS = _error_codes("XML_ERROR_UNKNOWN_ENCODING", "XML_ERROR_INCORRECT_ENCODING")

# Markup expat passes to the default handler that restricted XML still allows.
_ALLOWED_DEFAULT = frozenset(["<![CDATA[", "]]>"])


class StreamViolation(Exception):
    """condition: an RFC 6120 §4.9.3 stream error condition name; text: a short human reason."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(condition, text)
        self.condition = condition
        self.text = text

    def __str__(self) -> str:
        return f"{self.condition}: {self.text}" if self.text else self.condition


@dataclass(frozen=True)
class ParserLimits:
    """Per-stream resource limits; exceeding any of them is a policy-violation.

    A stanza's size runs from the ``<`` of its start tag to the start of its end
    tag, or to the last byte received while it is still open.
    """

    max_stanza_size: int = 256 * 1024  # bytes of one top-level child (stanza) of the stream
    max_depth: int = 64  # element nesting inside a stanza (the stanza itself is depth 1)
    max_attributes: int = 100  # per element
    max_namespaces: int = 100  # namespace declarations per element
    max_attribute_length: int = 64 * 1024  # characters of one attribute value


def _ignore(*args: Any) -> None:
    """Default event handler, so a half-wired stream does not crash on None."""


def _scan_tag(buf: bytes | bytearray, pos: int, quote: int) -> tuple[bool, int]:
    """Look for the ``>`` that ends a tag, skipping quoted attribute values.

    ``quote`` is the quote byte we are inside (0 if none); returns whether the
    tag ended and the quote state at the end of ``buf``.
    """
    while True:
        if quote:
            pos = buf.find(quote, pos)
            if pos < 0:
                return False, quote
            pos += 1
            quote = 0
        else:
            match = _TAG_STOP.search(buf, pos)
            if match is None:
                return False, 0
            pos = match.start()
            if buf[pos] == 0x3E:  # ">"
                return True, 0
            quote = buf[pos]
            pos += 1


def _refuse(text: str) -> Callable[..., None]:
    """An expat handler that rejects a construct restricted XML forbids."""

    def handler(*args: Any) -> None:
        raise StreamViolation("restricted-xml", text)

    return handler


class RestrictedElementStream:
    """Turns the bytes of one XML stream into ``domish.Element`` events.

    Same interface as ``domish.ExpatElementStream``: set the three event
    attributes, then call ``parse()`` with whatever bytes arrive. ``parse()``
    raises ``StreamViolation``; after that the object is dead and every later
    call raises the same violation.
    """

    DocumentStartEvent: Callable[[Element], None]
    ElementEvent: Callable[[Element], None]
    DocumentEndEvent: Callable[[], None]

    def __init__(self, limits: ParserLimits = ParserLimits()) -> None:
        self.DocumentStartEvent = _ignore
        self.ElementEvent = _ignore
        self.DocumentEndEvent = _ignore
        self._limits = limits
        self._violation: StreamViolation | None = None

        # Element building: the open elements of the current stanza, the text
        # waiting to be added to the innermost one, and namespace state.
        self._stack: list[Element] = []
        self._text: list[str] = []
        self._default_ns: list[str | None] = [""]
        self._prefixes: dict[str, str] | None = None
        self._ns_count = 0
        self._started = False

        # Byte accounting: bytes given to expat, where the open stanza began,
        # the first bytes of the stream (to recognise UTF-16/32), and the
        # unfinished token expat is holding (see _HOLD_THRESHOLD).
        self._fed = 0
        self._stanza_start = 0
        self._head = b""
        self._tail = b""
        self._pending: bytearray | None = None
        self._pending_start = 0
        self._quote: int | None = None

        parser = self._parser = expat.ParserCreate("UTF-8", _NS_SEPARATOR)
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.UseForeignDTD(False)
        if hasattr(parser, "SetReparseDeferralEnabled"):
            # Expat >= 2.6 may sit on a complete stanza until more bytes come;
            # this class does its own, event-preserving deferral instead.
            parser.SetReparseDeferralEnabled(False)
        parser.buffer_text = True
        parser.XmlDeclHandler = self._on_xml_decl
        parser.StartElementHandler = self._on_start
        parser.EndElementHandler = self._on_end
        parser.CharacterDataHandler = self._on_text
        parser.StartNamespaceDeclHandler = self._on_ns_start
        parser.EndNamespaceDeclHandler = self._on_ns_end
        parser.DefaultHandler = self._on_default
        parser.StartDoctypeDeclHandler = _refuse("DTDs are not allowed")
        dtd = _refuse("DTD declarations are not allowed")
        parser.EntityDeclHandler = dtd
        parser.UnparsedEntityDeclHandler = dtd
        parser.NotationDeclHandler = dtd
        parser.ElementDeclHandler = dtd
        parser.AttlistDeclHandler = dtd
        parser.ExternalEntityRefHandler = _refuse("external entities are not allowed")
        parser.SkippedEntityHandler = _refuse("entity references are not allowed")
        parser.ProcessingInstructionHandler = _refuse("processing instructions are not allowed")
        parser.CommentHandler = _refuse("comments are not allowed")

    @property
    def between_elements(self) -> bool:
        """Nothing is half-read: no top-level element is open and no tag is unfinished.

        Framed transports (RFC 7395 WebSocket) check it after each message,
        which must hold exactly one whole element.
        """
        return not self._stack and self._pending is None and not self._tail.strip()

    # -- feeding ---------------------------------------------------------------

    def parse(self, data: bytes) -> None:
        """Feed the next bytes of the stream; events fire before this returns."""
        if self._violation is not None:
            raise self._violation.with_traceback(None)
        try:
            if self._pending is None:
                self._feed(data)
            else:
                self._hold(data)
        except StreamViolation as exc:
            self._violation = exc
            raise
        except expat.ExpatError as exc:
            self._violation = self._classify(exc)
            raise self._violation from exc
        except Exception:
            self._violation = StreamViolation("internal-server-error", "stream handler failed")
            raise

    def _feed(self, data: bytes) -> None:
        """Give bytes to expat, then bound what is still unfinished."""
        parser = self._parser
        if self._fed < 4:
            # Expat would honour a UTF-16 byte-order mark or NUL pattern even
            # though UTF-8 is forced, so look at the first bytes ourselves.
            self._head = head = (self._head + data[:4])[:4]
            if b"\x00" in head or head[:1] in (b"\xfe", b"\xff"):
                raise StreamViolation("unsupported-encoding", "the stream must be UTF-8")
        self._fed += len(data)
        parser.Parse(data)
        consumed = max(parser.CurrentByteIndex, 0)
        start = self._stanza_start if self._stack else consumed
        if self._fed - start > self._limits.max_stanza_size:
            raise StreamViolation("policy-violation", "stanza too large")
        unfinished = self._fed - consumed
        if not unfinished:
            self._tail = b""
            return
        # Keep a copy of the unfinished token; it may span several chunks.
        if unfinished <= len(data):
            tail = data[-unfinished:]
        else:
            tail = self._tail[max(0, len(self._tail) - (unfinished - len(data))) :] + data
        self._tail = tail
        if unfinished >= _HOLD_THRESHOLD:
            self._pending = bytearray()
            self._pending_start = start
            is_tag = tail[:1] == b"<" and tail[1:2] not in (b"!", b"?")
            self._quote = _scan_tag(tail, 1, 0)[1] if is_tag else None

    def _hold(self, data: bytes) -> None:
        """Collect bytes behind a long unfinished token; feed when it may be done."""
        pending = self._pending
        assert pending is not None
        scanned = len(pending)
        pending += data
        if self._fed + len(pending) - self._pending_start > self._limits.max_stanza_size:
            raise StreamViolation("policy-violation", "stanza too large")
        done = False
        if self._quote is not None:
            done, self._quote = _scan_tag(pending, scanned, self._quote)
        # Doubling keeps expat's rescans linear; a closed tag must not wait.
        if done or len(pending) >= len(self._tail):
            self._pending = None
            self._feed(bytes(pending))

    def _classify(self, exc: expat.ExpatError) -> StreamViolation:
        """Map an expat error to the stream error condition RFC 6120 asks for."""
        if exc.code in _ENTITY_ERRORS:
            return StreamViolation("restricted-xml", str(exc))
        if exc.code in _ENCODING_ERRORS:
            return StreamViolation("unsupported-encoding", "the stream must be UTF-8")
        return StreamViolation("not-well-formed", str(exc))

    # -- expat handlers ----------------------------------------------------------

    def _on_xml_decl(self, version: str, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() != "utf-8":
            raise StreamViolation("unsupported-encoding", f"encoding {encoding!r} is not UTF-8")

    def _on_default(self, data: str) -> None:
        # Whitespace around the root element and CDATA section markers land
        # here; anything else is markup restricted XML does not allow.
        if not data.isspace() and data not in _ALLOWED_DEFAULT:
            raise StreamViolation("restricted-xml", "unexpected markup")

    def _on_ns_start(self, prefix: str | None, uri: str | None) -> None:
        self._ns_count += 1
        if self._ns_count > self._limits.max_namespaces:
            raise StreamViolation("policy-violation", "too many namespace declarations")
        if prefix is None:
            self._default_ns.append(uri)
        elif self._prefixes is None:
            self._prefixes = {prefix: uri}
        else:
            self._prefixes[prefix] = uri

    def _on_ns_end(self, prefix: str | None) -> None:
        if prefix is None:
            self._default_ns.pop()

    def _on_start(self, name: str, attrs: dict[Any, str]) -> None:
        limits = self._limits
        stack = self._stack
        self._ns_count = 0
        if len(stack) >= limits.max_depth:
            raise StreamViolation("policy-violation", "elements nested too deeply")
        if attrs:
            if len(attrs) > limits.max_attributes:
                raise StreamViolation("policy-violation", "too many attributes")
            max_length = limits.max_attribute_length
            qualified = None
            for key, value in attrs.items():
                if len(value) > max_length:
                    raise StreamViolation("policy-violation", "attribute value too long")
                if _NS_SEPARATOR in key:
                    if qualified is None:
                        qualified = []
                    qualified.append(key)
            if qualified:
                # Namespaced attributes (xml:lang...) are keyed (uri, name), as domish does.
                for key in qualified:
                    uri, _, local = key.rpartition(_NS_SEPARATOR)
                    attrs[(uri, local)] = attrs.pop(key)

        uri, _, local = name.rpartition(_NS_SEPARATOR)
        element = Element((uri, local), self._default_ns[-1], attrs, self._prefixes)
        self._prefixes = None

        if stack:
            parent = stack[-1]
            if self._text:
                parent.addContent("".join(self._text))
                self._text.clear()
            if self._parser.CurrentByteIndex - self._stanza_start > limits.max_stanza_size:
                raise StreamViolation("policy-violation", "stanza too large")
            parent.children.append(element)
            element.parent = parent
            stack.append(element)
        elif self._started:
            self._stanza_start = self._parser.CurrentByteIndex
            stack.append(element)
        else:
            self._started = True
            self.DocumentStartEvent(element)

    def _on_end(self, name: str) -> None:
        stack = self._stack
        if not stack:
            self.DocumentEndEvent()
            return
        element = stack.pop()
        if self._text:
            element.addContent("".join(self._text))
            self._text.clear()
        if not stack:
            if self._parser.CurrentByteIndex - self._stanza_start > self._limits.max_stanza_size:
                raise StreamViolation("policy-violation", "stanza too large")
            self.ElementEvent(element)

    def _on_text(self, data: str) -> None:
        # Text directly inside the root (whitespace keepalives) is dropped.
        if self._stack:
            self._text.append(data)


_STORED_STREAM_HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


def parse_stanza(xml: str) -> Element:
    """Parse one serialised jabber:client stanza (e.g. from the offline store).

    The same restricted parser as for the wire, so stored data is held to the
    same rules as data from a socket.
    """
    stanzas: list[Element] = []
    stream = RestrictedElementStream()
    stream.ElementEvent = stanzas.append
    stream.parse(_STORED_STREAM_HEADER + xml.encode("utf-8") + b"</stream:stream>")
    if len(stanzas) != 1:
        raise StreamViolation("bad-format", "expected exactly one stanza")
    return stanzas[0]
