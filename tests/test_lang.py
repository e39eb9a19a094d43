"""xml:lang (RFC 6120 §4.7.4, §8.1.5): the response header, stanzas, the server's own text.

The lookup rules are pure and tested in memory; the rest over the wire.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from support.client import MESSAGE, NS_CLIENT, NS_SASL, NS_STREAMS, RawClient, clark, to_text
from support.im import AccountPool, message, online
from support.server import ServerProcess
from twisted.words.protocols.jabber.error import StanzaError

from imserver import lang

MakeClient = Callable[..., RawClient]
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# -- the rules, in memory --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en", "en"),
        ("de-CH", "de-CH"),
        ("zh-Hant-TW", "zh-Hant-TW"),
        (None, None),
        ("", None),
        ("9x", None),  # the first subtag is letters
        ("en_GB", None),
        ("toolongsubtag", None),
        ("en-", None),
    ],
)
def test_preferred_accepts_well_formed_tags_only(value, expected) -> None:
    assert lang.preferred(value) == expected


@pytest.mark.parametrize(
    ("wanted", "available", "expected"),
    [
        ("en", ("en",), "en"),
        ("EN-gb", ("en",), "en"),
        ("de", ("en",), "en"),  # no German text: the default
        (None, ("en",), "en"),
        ("de-CH-1996", ("en", "de"), "de"),
        ("de-CH", ("en", "de-CH", "de"), "de-CH"),
        # RFC 4647 §3.4's example: a singleton left at the end goes with its subtag.
        ("zh-Hant-CN-x-private1-private2", ("en", "zh-Hant-CN"), "zh-Hant-CN"),
        ("fr-x-y", ("en", "fr"), "fr"),
    ],
)
def test_lookup_follows_rfc_4647(wanted, available, expected) -> None:
    assert lang.lookup(wanted, available) == expected


def test_labelled_marks_only_unlabelled_text() -> None:
    assert lang.labelled(StanzaError("bad-request", text="why")).textLang == "en"
    assert lang.labelled(StanzaError("bad-request")).textLang is None
    kept = StanzaError("bad-request", text="warum", textLang="de")
    assert lang.labelled(kept).textLang == "de"


# -- over the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preferred", "answered"),
    [("en", "en"), ("en-GB", "en"), ("de", "en"), (None, "en"), ("9-not-a-tag", "en")],
)
def test_response_header_names_the_language_we_answer_in(
    make_client: MakeClient, pool: AccountPool, preferred: str | None, answered: str
) -> None:
    """Every response header (before TLS, after TLS, after SASL) carries xml:lang."""
    (account,) = pool.take(1)
    client = make_client()
    client.lang = preferred
    client.open_stream()
    assert client.root.get(XML_LANG) == answered, client.transcript[-1]
    client.starttls()
    client.open_stream()
    assert client.root.get(XML_LANG) == answered
    client.auth_scram(*account)
    client.open_stream()
    assert client.root.get(XML_LANG) == answered
    client.bind()


def test_stanzas_carry_the_senders_stream_language(
    make_client: MakeClient, pool: AccountPool
) -> None:
    german_account, plain_account, bob_account = pool.take(3)
    german = make_client()
    german.lang = "de"
    german.login(*german_account)
    silent = make_client()
    silent.lang = None
    silent.login(*plain_account)
    bob = online(make_client, bob_account)

    german.send(f"<message to='{bob.bare}' type='chat' id='1'><body>Hallo</body></message>")
    assert bob.expect(message(german.jid)).get(XML_LANG) == "de"
    # A stanza's own xml:lang is never changed.
    german.send(
        f"<message to='{bob.bare}' type='chat' id='2' xml:lang='fr'><body>Salut</body></message>"
    )
    assert bob.expect(message(german.jid)).get(XML_LANG) == "fr"
    german.send(f"<presence to='{bob.bare}'><status>Im Büro</status></presence>")
    got = bob.expect(lambda e: e.get("from") == german.jid and e.tag != MESSAGE)
    assert got.get(XML_LANG) == "de", to_text(got)
    # A client that named no language: nothing is added.
    silent.send(f"<message to='{bob.bare}' type='chat'><body>hi</body></message>")
    assert bob.expect(message(silent.jid)).get(XML_LANG) is None


def test_stanza_error_text_is_labelled_with_its_language(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """Our text is English whatever the client prefers: the label says so."""
    (account,) = pool.take(1)
    user = make_client()
    user.lang = "de"
    user.login(*account)
    user.send(f"<message to='{account[0]}' type='bogus' id='x'><body>?</body></message>")
    error = user.expect(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    text = error.find(f"{clark(NS_CLIENT, 'error')}/{clark(NS_STANZAS, 'text')}")
    assert text is not None and text.text, to_text(error)
    assert text.get(XML_LANG) == "en"


def test_stream_error_text_is_labelled(server: ServerProcess, make_client: MakeClient) -> None:
    client = make_client()
    client.send(
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}'"
        f" xmlns:stream='{NS_STREAMS}' version='1.0' xml:lang='de'>"
    )
    error = client.expect_stream_error("host-unknown")
    assert client.root.get(XML_LANG) == "en"
    text = error.find(clark("urn:ietf:params:xml:ns:xmpp-streams", "text"))
    assert text is not None and text.text, to_text(error)
    assert text.get(XML_LANG) == "en"


def test_sasl_failure_text_is_labelled(make_client: MakeClient) -> None:
    client = make_client()
    client.open_stream()
    client.starttls()
    client.open_stream()
    # A binding type nobody offered: SCRAM refuses it with an explanation.
    first = base64.b64encode(b"p=tls-unique,,n=someone,r=abcdefgh").decode()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert failure.tag == clark(NS_SASL, "failure"), to_text(failure)
    text = failure.find(clark(NS_SASL, "text"))
    assert text is not None and text.text, to_text(failure)
    assert text.get(XML_LANG) == "en"
