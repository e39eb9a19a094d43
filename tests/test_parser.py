"""RestrictedElementStream: domish-identical Elements, RFC 6120 restrictions, and bounded cost."""

from __future__ import annotations

import inspect
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from twisted.words.xish import domish

from imserver.stream.parser import ParserLimits, RestrictedElementStream, StreamViolation

XML_NS = "http://www.w3.org/XML/1998/namespace"
STREAMS_NS = "http://etherx.jabber.org/streams"
HEADER = (
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' "
    b"to='example.com' version='1.0' xml:lang='en'>"
)

SAMPLE = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' "
    "to='example.com' version='1.0' xml:lang='en'>  \n"
    "<message to='romeo@example.net' type='chat' xml:lang='de' id='m1'>"
    "<body>Hallo &amp; tsch\u00fcss &#x41;&#66;&lt;&gt;&quot;&apos;\r\nzwei</body>"
    "<foo:bar xmlns:foo='urn:x' foo:attr='v' plain='p'><foo:baz/>t<![CDATA[<x>&]]>u</foo:bar>"
    "<thread xmlns=''>z</thread><x xmlns='urn:y'><y/></x></message>\n"
    "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    " \t</stream:stream>\n"
).encode()


class Recorder:
    """Collects the events of one element stream, in order."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.events: list[tuple] = []
        stream.DocumentStartEvent = lambda element: self.events.append(("start", element))
        stream.ElementEvent = lambda element: self.events.append(("element", element))
        stream.DocumentEndEvent = lambda: self.events.append(("end",))

    def feed(self, *chunks: bytes) -> Recorder:
        for chunk in chunks:
            self.stream.parse(chunk)
        return self

    @property
    def stanzas(self) -> list[domish.Element]:
        return [event[1] for event in self.events if event[0] == "element"]


def restricted(limits: ParserLimits | None = None, header: bytes = HEADER) -> Recorder:
    stream = RestrictedElementStream(limits) if limits else RestrictedElementStream()
    return Recorder(stream).feed(header)


def split(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def describe(node: object) -> object:
    """Everything the server can observe about an Element tree, for comparison."""
    if isinstance(node, str):
        return node
    assert isinstance(node, domish.Element)
    return (
        node.uri,
        node.name,
        node.defaultUri,
        dict(node.localPrefixes),
        list(node.attributes.items()),
        [describe(child) for child in node.children],
        node.parent.name if node.parent is not None else None,
        node.toXml(),
    )


def describe_events(recorder: Recorder) -> list[tuple]:
    return [(event[0], *map(describe, event[1:])) for event in recorder.events]


def expect_violation(condition: str, *chunks: bytes, limits: ParserLimits | None = None) -> None:
    stream = RestrictedElementStream(limits) if limits else RestrictedElementStream()
    with pytest.raises(StreamViolation) as info:
        for chunk in chunks:
            stream.parse(chunk)
    assert info.value.condition == condition, info.value


# -- same Elements as Twisted ---------------------------------------------------


@pytest.mark.parametrize("chunk_size", [len(SAMPLE), 1, 7, 64])
def test_events_match_domish(chunk_size: int) -> None:
    expected = Recorder(domish.ExpatElementStream()).feed(*split(SAMPLE, chunk_size))
    actual = Recorder(RestrictedElementStream()).feed(*split(SAMPLE, chunk_size))
    assert [e[0] for e in actual.events] == ["start", "element", "element", "end"]
    assert describe_events(actual) == describe_events(expected)


@pytest.mark.parametrize("seed", range(20))
def test_events_match_domish_on_random_fragments(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(SAMPLE)), rng.randint(1, 60)))
    chunks = [SAMPLE[a:b] for a, b in zip([0, *cuts], [*cuts, len(SAMPLE)], strict=True)]
    expected = Recorder(domish.ExpatElementStream()).feed(*chunks)
    actual = Recorder(RestrictedElementStream()).feed(*chunks)
    assert describe_events(actual) == describe_events(expected)


def test_header_and_prefixes_look_like_domish() -> None:
    recorder = Recorder(RestrictedElementStream()).feed(SAMPLE)
    header = recorder.events[0][1]
    assert (header.uri, header.name, header.defaultUri) == (STREAMS_NS, "stream", "jabber:client")
    assert header.localPrefixes == {"stream": STREAMS_NS}
    assert header.attributes[(XML_NS, "lang")] == "en"
    assert header.children == []

    message = recorder.stanzas[0]
    assert message.parent is None
    assert (message.uri, message.name, message["id"]) == ("jabber:client", "message", "m1")
    assert message.attributes[(XML_NS, "lang")] == "de"
    assert str(message.body) == "Hallo & tsch\u00fcss AB<>\"'\nzwei"
    bar = message.bar
    assert (bar.uri, bar.defaultUri, bar.localPrefixes) == (
        "urn:x",
        "jabber:client",
        {"foo": "urn:x"},
    )
    assert bar.attributes == {"plain": "p", ("urn:x", "attr"): "v"}
    assert bar.children[1:] == ["t<x>&u"]
    assert bar.baz.uri == "urn:x"
    assert (message.thread.uri, message.thread.defaultUri) == ("", "")


def test_utf8_bom_and_whitespace_around_root_are_fine() -> None:
    recorder = Recorder(RestrictedElementStream()).feed(
        b"\xef\xbb\xbf<?xml version='1.0'?>\n\n", HEADER, b"<presence/></stream:stream>\n  \n"
    )
    assert [e[0] for e in recorder.events] == ["start", "element", "end"]


# -- restricted XML ---------------------------------------------------------------


def billion_laughs() -> bytes:
    """The classic entity bomb: ten entities, each ten references to the one before."""
    entities = ['<!ENTITY a "lol">'] + [
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    ]
    return f'<?xml version="1.0"?><!DOCTYPE z [{"".join(entities)}]><z>&j;</z>'.encode()


def test_billion_laughs_is_refused_without_expanding() -> None:
    bomb = billion_laughs()
    assert 400 < len(bomb) < 500
    started = time.process_time()
    expect_violation("restricted-xml", bomb)
    cpu = time.process_time() - started
    print(f"billion laughs ({len(bomb)} bytes) refused after {cpu * 1000:.2f} ms of CPU")
    assert cpu < 0.5


def test_billion_laughs_byte_by_byte() -> None:
    started = time.process_time()
    expect_violation("restricted-xml", *split(billion_laughs(), 1))
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    "document",
    [
        b"<!DOCTYPE stream>" + HEADER,
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x 'y'>]><s>&x;</s>",
        b"<!DOCTYPE s SYSTEM 'file:///etc/passwd'><s/>",
        b"<!DOCTYPE s [<!ENTITY x SYSTEM 'http://example.com/'>]><s>&x;</s>",
        b"<!DOCTYPE s [<!ENTITY % p SYSTEM 'http://example.com/'> %p;]><s/>",
        HEADER + b"<message>&nbsp;</message>",
        HEADER + b"<message to='&x;'/>",
        HEADER + b"&x;",
        HEADER + b"<message><?php echo 1; ?></message>",
        b"<?xml version='1.0'?><?xml-stylesheet href='x'?>" + HEADER,
        b"<?pi?>" + HEADER,
        HEADER + b"<message><!-- hello --></message>",
        b"<!-- hello -->" + HEADER,
        HEADER + b"<!---->",
        HEADER + b"</stream:stream><!-- bye -->",
    ],
    ids=[
        "doctype",
        "internal-entity",
        "external-dtd",
        "external-entity",
        "parameter-entity",
        "undefined-entity",
        "entity-in-attribute",
        "entity-between-stanzas",
        "pi-in-stanza",
        "pi-in-prolog",
        "pi-first",
        "comment-in-stanza",
        "comment-in-prolog",
        "comment-between-stanzas",
        "comment-after-end",
    ],
)
def test_restricted_xml(document: bytes) -> None:
    expect_violation("restricted-xml", document)
    expect_violation("restricted-xml", *split(document, 1))


def test_xml_declaration_predefined_entities_and_character_references_are_allowed() -> None:
    recorder = restricted(
        header=b"<?xml version='1.0' encoding='utf-8' standalone='yes'?>" + HEADER
    )
    recorder.feed(b"<message>&lt;&gt;&amp;&quot;&apos;&#x1F600;&#233;</message>")
    assert str(recorder.stanzas[0]) == "<>&\"'\U0001f600\u00e9"


# -- encodings and malformed XML ----------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER,
        b"<?xml version='1.0' encoding='UTF-16'?>" + HEADER,
        b"\xff\xfe" + HEADER.decode().encode("utf-16-le"),
        b"\xfe\xff" + HEADER.decode().encode("utf-16-be"),
        HEADER.decode().encode("utf-16-le"),
        HEADER.decode().encode("utf-32-be"),
    ],
    ids=["latin1-decl", "utf16-decl", "utf16le-bom", "utf16be-bom", "utf16le-bare", "utf32"],
)
def test_other_encodings_are_unsupported(document: bytes) -> None:
    expect_violation("unsupported-encoding", document)
    expect_violation("unsupported-encoding", *split(document, 1))


@pytest.mark.parametrize(
    "data",
    [
        b"<message><body>caf\xe9</body></message>",  # Latin-1 byte
        b"<message><body>\xc3(</body></message>",  # truncated sequence
        b"<message><body>\xed\xa0\x80</body></message>",  # UTF-16 surrogate
        b"<message><body>\xc0\xaf</body></message>",  # overlong encoding
        b"<message to='\xff'/>",
    ],
)
def test_invalid_utf8_is_not_well_formed(data: bytes) -> None:
    expect_violation("not-well-formed", HEADER + data)
    expect_violation("not-well-formed", *split(HEADER + data, 1))


@pytest.mark.parametrize(
    "data",
    [
        b"<message></iq>",
        b"<message><body></message>",
        b"<message to='a' to='b'/>",
        b"<message to=a/>",
        b"<x:message/>",
        b"<message xmlns:x=''/>",
        b"<message>\x01</message>",
        b"<message>&#0;</message>",
        b"</stream:stream><message/>",
        b"<>",
        b"<<a/>",
    ],
)
def test_malformed_xml(data: bytes) -> None:
    expect_violation("not-well-formed", HEADER + data)
    expect_violation("not-well-formed", *split(HEADER + data, 1))


# -- limits ------------------------------------------------------------------------


def nested(levels: int) -> bytes:
    return HEADER + b"<message>" + b"<a>" * (levels - 1) + b"</a>" * (levels - 1) + b"</message>"


def test_depth_limit_is_inclusive() -> None:
    recorder = restricted(ParserLimits(max_depth=64)).feed(nested(64)[len(HEADER) :])
    element, depth = recorder.stanzas[0], 1
    while element.children:
        element, depth = element.children[0], depth + 1
    assert depth == 64
    expect_violation("policy-violation", nested(65), limits=ParserLimits(max_depth=64))


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 4096])
def test_deep_nesting_is_refused_fast(chunk_size: int | None) -> None:
    document = HEADER + b"<message>" + b"<a>" * 10_000
    chunks = [document] if chunk_size is None else list(split(document, chunk_size))
    stream = RestrictedElementStream()
    fed = 0
    started = time.process_time()
    with pytest.raises(StreamViolation) as info:
        for chunk in chunks:
            fed += len(chunk)
            stream.parse(chunk)
    assert info.value.condition == "policy-violation"
    assert time.process_time() - started < 0.5
    if chunk_size == 1:
        # Raised on the very byte that completes the 65th start tag.
        assert fed == len(HEADER) + len(b"<message>") + 64 * len(b"<a>")


def test_deep_tree_is_built_without_recursion() -> None:
    levels = 10_000
    recorder = restricted(ParserLimits(max_depth=levels + 1))
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 50)
    try:
        recorder.feed(nested(levels)[len(HEADER) :])
        recorder.feed(*split(nested(levels)[len(HEADER) :], 3))
    finally:
        sys.setrecursionlimit(old_limit)
    for stanza in recorder.stanzas:
        element, depth = stanza, 1
        while element.children:
            assert element.children[0].parent is element
            element, depth = element.children[0], depth + 1
        assert depth == levels


def attributes(count: int) -> bytes:
    return b" ".join(b"a%d='v'" % i for i in range(count))


def test_attribute_count_limit() -> None:
    stanza = restricted().feed(b"<message " + attributes(100) + b"/>").stanzas[0]
    assert len(stanza.attributes) == 100
    expect_violation("policy-violation", HEADER, b"<message " + attributes(101) + b"/>")
    expect_violation(
        "policy-violation", b"<stream:stream xmlns:stream='s' " + attributes(101) + b">"
    )


def namespaces(count: int) -> bytes:
    return b" ".join(b"xmlns:p%d='urn:%d'" % (i, i) for i in range(count))


def test_namespace_declaration_limit() -> None:
    stanza = restricted().feed(b"<message " + namespaces(100) + b"/>").stanzas[0]
    assert len(stanza.localPrefixes) == 100
    expect_violation("policy-violation", HEADER, b"<message " + namespaces(101) + b"/>")
    # The limit is per element: 100 on each of two nested elements is fine.
    restricted().feed(b"<message " + namespaces(100) + b"><b " + namespaces(100) + b"/></message>")


def test_attribute_length_limit() -> None:
    limits = ParserLimits(max_attribute_length=1000)
    stanza = restricted(limits).feed(b"<message id='" + b"x" * 1000 + b"'/>").stanzas[0]
    assert len(stanza["id"]) == 1000
    expect_violation(
        "policy-violation", HEADER, b"<message id='" + b"x" * 1001 + b"'/>", limits=limits
    )
    long_lang = b"<message xml:lang='" + b"x" * 1001 + b"'/>"
    expect_violation("policy-violation", HEADER, long_lang, limits=limits)


def test_stanza_size_limit_on_complete_stanzas() -> None:
    limits = ParserLimits(max_stanza_size=4096)
    fits = b"<message><body>" + b"x" * 3000 + b"</body></message>"
    too_big = b"<message><body>" + b"x" * 5000 + b"</body></message>"
    assert len(restricted(limits).feed(fits, fits, fits).stanzas) == 3
    expect_violation("policy-violation", HEADER + fits + too_big, limits=limits)
    expect_violation(
        "policy-violation", HEADER, b"<message to='" + b"x" * 5000 + b"'/>", limits=limits
    )
    many_elements = b"<message>" + b"<a>x</a>" * 1000 + b"</message>"
    expect_violation("policy-violation", HEADER + many_elements, limits=limits)


@pytest.mark.parametrize(
    "opening",
    [b"<message><body>", b"<message to='", b"<message><a><b><c>", b"<message "],
    ids=["text", "attribute", "elements", "tag"],
)
def test_unfinished_stanza_is_refused_while_arriving(opening: bytes) -> None:
    limit = 256 * 1024
    filler = {b"<message><a><b><c>": b"<d/>" * 1024, b"<message ": b"a" * 4096}.get(opening)
    chunk = filler or b"y" * 4096
    stream = RestrictedElementStream()
    stream.parse(HEADER)
    stream.parse(opening)
    fed = len(opening)
    with pytest.raises(StreamViolation) as info:
        for _ in range(1000):
            fed += len(chunk)
            stream.parse(chunk)
    assert info.value.condition == "policy-violation"
    assert limit < fed <= limit + len(chunk)


def test_keepalive_whitespace_does_not_accumulate() -> None:
    recorder = restricted(ParserLimits(max_stanza_size=1024))
    keepalive = b" \n\t" * 1000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3000):  # 9 MB of whitespace, far above the stanza limit
            recorder.feed(keepalive)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024
    recorder.feed(b"<presence/>", *split(b" " * 5000, 1), b"<presence/>")
    assert len(recorder.stanzas) == 2


# -- fragmented input --------------------------------------------------------------


def test_negotiation_one_byte_at_a_time() -> None:
    stream = (
        b"<?xml version='1.0'?>" + HEADER + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
        b"mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>"
    )
    recorder = Recorder(RestrictedElementStream())
    for index, byte in enumerate(split(stream, 1), 1):
        recorder.feed(byte)
        if index == len(stream):
            assert len(recorder.stanzas) == 1  # delivered on its last byte, not later
        elif index >= len(b"<?xml version='1.0'?>" + HEADER):
            assert recorder.events[0][0] == "start" and not recorder.stanzas
    assert str(recorder.stanzas[0]) == "AGp1bGlldAByMG0zMG15cjBtMzA="


def test_long_tag_byte_by_byte_costs_linear_time() -> None:
    # Plain expat rescans an unfinished tag on every byte: minutes for 200 KiB.
    value = b"v" * (200 * 1024)
    stanza = b"<message to='" + value + b"'><body>hi</body></message>"
    recorder = restricted(ParserLimits(max_attribute_length=len(value)))
    started = time.process_time()
    recorder.feed(*split(stanza, 1))
    cpu = time.process_time() - started
    print(f"200 KiB start tag fed byte by byte: {cpu:.2f} s of CPU")
    assert cpu < 3
    assert recorder.stanzas[0]["to"] == value.decode()


def test_long_text_byte_by_byte_costs_linear_time() -> None:
    body = "\u00e9" * (100 * 1024)
    recorder = restricted()
    started = time.process_time()
    recorder.feed(*split(f"<message><body>{body}</body></message>".encode(), 1))
    assert time.process_time() - started < 3
    assert str(recorder.stanzas[0].body) == body


def test_long_tag_is_delivered_as_soon_as_it_closes() -> None:
    # Quoted '>' and quotes of the other kind must not fool the held-back tag scanner.
    tag = b"<message a='" + b">" * 3000 + b"' b=\"'>'\" c='" + b'"' * 3000 + b"'"
    recorder = restricted()
    recorder.feed(*split(tag, 100))
    recorder.feed(b" ")
    assert not recorder.stanzas
    recorder.feed(b"/>")
    assert len(recorder.stanzas) == 1
    assert recorder.stanzas[0]["b"] == "'>'"
    end = b"<message>" + b"<x y='" + b"z" * 2000 + b"'>" + b"</x" + b" " * 3000
    recorder.feed(*split(end, 1))
    recorder.feed(b"></message>")
    assert len(recorder.stanzas) == 2


# -- after a violation or a failing handler -------------------------------------------------


def test_dead_after_violation() -> None:
    stream = RestrictedElementStream()
    stream.parse(HEADER)
    with pytest.raises(StreamViolation) as first:
        stream.parse(b"<message><!-- no --></message>")
    for data in (b"<presence/>", b"", HEADER):
        with pytest.raises(StreamViolation) as again:
            stream.parse(data)
        assert again.value is first.value
    assert (first.value.condition, first.value.text) == (
        "restricted-xml",
        "comments are not allowed",
    )


def test_failing_handler_propagates_and_kills_the_stream() -> None:
    stream = RestrictedElementStream()

    def broken(element: domish.Element) -> None:
        raise RuntimeError("router bug")

    stream.ElementEvent = broken
    stream.parse(HEADER)
    with pytest.raises(RuntimeError):
        stream.parse(b"<presence/>")
    with pytest.raises(StreamViolation) as info:
        stream.parse(b"<presence/>")
    assert info.value.condition == "internal-server-error"


def test_stream_violation_carries_condition_and_text() -> None:
    violation = StreamViolation("policy-violation", "stanza too large")
    assert (violation.condition, violation.text) == ("policy-violation", "stanza too large")
    assert str(violation) == "policy-violation: stanza too large"
    assert StreamViolation("not-well-formed").text == ""
