"""Stream-level wire tests (RFC 6120): headers, restricted XML, limits, TLS, SASL, bind.

Raw XML over real sockets against a real server process. After every error
case a fresh connection must still log in, so one bad client never takes the
server down with it.
"""

from __future__ import annotations

import base64
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from scramp import ScramClient
from support.client import (
    IQ,
    MESSAGE,
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_SASL_CB,
    NS_SESSION,
    NS_STREAMS,
    NS_TLS,
    STREAM_ERROR,
    AuthFailed,
    RawClient,
    clark,
    stanza_error,
    to_text,
)
from support.server import ServerProcess

Credentials = tuple[str, str]
MakeClient = Callable[..., RawClient]

PING = "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
ALL_MECHANISMS = {
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "PLAIN",
}


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Credentials:
    """One account for the tests that only need to log in."""
    return server.new_account("alice")


# -- helpers --------------------------------------------------------------------


def header(
    to: str | None = "localhost",
    version: str | None = "1.0",
    content_ns: str = NS_CLIENT,
    stream_ns: str = NS_STREAMS,
) -> str:
    """A stream header with every part a test may want to get wrong."""
    attributes = ""
    if to is not None:
        attributes += f" to='{to}'"
    if version is not None:
        attributes += f" version='{version}'"
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{content_ns}' "
        f"xmlns:stream='{stream_ns}'{attributes}>"
    )


def logged_in(
    make_client: MakeClient,
    credentials: Credentials,
    target: ServerProcess | None = None,
    resource: str | None = None,
    mechanism: str = "SCRAM-SHA-256",
) -> RawClient:
    client = make_client(target)
    client.login(*credentials, resource=resource, mechanism=mechanism)
    return client


def assert_still_serves(server: ServerProcess, credentials: Credentials) -> None:
    """A new connection logs in and gets its ping answered."""
    with RawClient.for_server(server) as client:
        client.connect()
        client.login(*credentials, resource="probe-" + secrets.token_hex(3))
        answer = client.iq(PING)
        assert answer.get("type") == "result", to_text(answer)


def mechanisms(features: ET.Element) -> set[str]:
    element = features.find(clark(NS_SASL, "mechanisms"))
    if element is None:
        return set()
    return {m.text for m in element.findall(clark(NS_SASL, "mechanism"))}


def sasl_condition(element: ET.Element) -> str:
    assert element.tag == clark(NS_SASL, "failure"), to_text(element)
    names = [child.tag for child in element if child.tag != clark(NS_SASL, "text")]
    assert len(names) == 1, to_text(element)
    return names[0].rpartition("}")[2]


def secure_stream(make_client: MakeClient, target: ServerProcess | None = None) -> RawClient:
    """A client after STARTTLS, with the post-TLS features read."""
    client = make_client(target)
    client.open_stream()
    client.starttls()
    client.open_stream()
    return client


def plain_payload(user: str, password: str) -> str:
    localpart = user.partition("@")[0]
    return base64.b64encode(f"\0{localpart}\0{password}".encode()).decode()


# -- stream headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "condition"),
    [
        (header(stream_ns="http://example.com/not-streams"), "invalid-namespace"),
        (header(content_ns="urn:example:not-client"), "invalid-namespace"),
        (header(content_ns="jabber:server"), "invalid-namespace"),
        (header(to="unknown.example"), "host-unknown"),
        (header(version="0.9"), "unsupported-version"),
        (header(version=None), "unsupported-version"),
    ],
    ids=["stream-ns", "content-ns", "server-ns", "unknown-to", "version-0.9", "no-version"],
)
def test_bad_stream_header(
    server: ServerProcess, alice: Credentials, make_client: MakeClient, opening: str, condition: str
) -> None:
    client = make_client()
    client.send(opening)
    client.expect_stream_error(condition)
    assert_still_serves(server, alice)


@pytest.mark.parametrize(
    "junk",
    [
        "<message><body>hi</message>",
        "<message><body>a < b</body></message>",
        "<foo:message><body/></foo:message>",
    ],
    ids=["mismatched-tag", "bare-lt", "unbound-prefix"],
)
def test_malformed_xml_is_not_well_formed(
    server: ServerProcess, alice: Credentials, make_client: MakeClient, junk: str
) -> None:
    client = make_client()
    client.open_stream()
    client.send(junk)
    client.expect_stream_error("not-well-formed")
    assert_still_serves(server, alice)


DOCTYPE = "<?xml version='1.0'?><!DOCTYPE stream:stream>"
ENTITY = "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'expanded'>]>"


@pytest.mark.parametrize(
    ("before_header", "after_header"),
    [
        (DOCTYPE, ""),
        (ENTITY, ""),
        ("", "<?evil processing='instruction'?>"),
        ("", "<!-- a comment -->"),
        ("", "<message to='localhost'><!-- inside a stanza --></message>"),
        ("", "<message to='localhost'><?pi inside?></message>"),
    ],
    ids=["doctype", "entity-declaration", "pi", "comment", "comment-in-stanza", "pi-in-stanza"],
)
def test_restricted_xml(
    server: ServerProcess,
    alice: Credentials,
    make_client: MakeClient,
    before_header: str,
    after_header: str,
) -> None:
    client = make_client()
    if before_header:
        # The declaration comes before the root, so send the header (sans its own
        # XML declaration) right after it.
        client.send(before_header + header().removeprefix("<?xml version='1.0'?>"))
    else:
        client.open_stream()
        client.send(after_header)
    client.expect_stream_error("restricted-xml")
    assert_still_serves(server, alice)


def billion_laughs() -> str:
    """The classic entity-expansion bomb: ten levels of ten references, ~3 GB expanded."""
    names = "abcdefghij"
    entities = '<!ENTITY a "lol">' + "".join(
        f'<!ENTITY {names[i]} "' + f"&{names[i - 1]};" * 10 + '">' for i in range(1, 10)
    )
    return f'<?xml version="1.0"?><!DOCTYPE l [{entities}]><l>&j;</l>'


def test_billion_laughs_is_refused_quickly(
    server: ServerProcess, alice: Credentials, make_client: MakeClient
) -> None:
    bomb = billion_laughs()
    assert len(bomb) < 512
    client = make_client()
    started = time.monotonic()
    client.send(bomb)
    client.expect_stream_error("restricted-xml", timeout=10)
    elapsed = time.monotonic() - started
    print(f"{len(bomb)}-byte billion laughs answered with restricted-xml in {elapsed:.3f} s")
    assert elapsed < 2.0
    assert_still_serves(server, alice)


def test_stanza_over_max_stanza_size_is_policy_violation(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    small = make_server(limits={"max_stanza_size": 16 * 1024})
    credentials = small.new_account()
    client = logged_in(make_client, credentials, target=small)
    padding = "x" * (8 * 1024)
    fits = client.iq(
        f"<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'>{padding}</ping></iq>"
    )
    assert fits.get("type") == "result", to_text(fits)
    padding = "x" * (20 * 1024)
    client.send(
        f"<iq type='get' id='big' to='localhost'><ping xmlns='urn:xmpp:ping'>{padding}</ping></iq>"
    )
    client.expect_stream_error("policy-violation")
    assert_still_serves(small, credentials)


def test_unauthenticated_stream_times_out(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    quick = make_server(limits={"unauthenticated_timeout": 1.5})
    credentials = quick.new_account()
    patient = logged_in(make_client, credentials, target=quick)
    idle = make_client(quick)
    idle.open_stream()
    started = time.monotonic()
    idle.expect_stream_error("connection-timeout", timeout=6)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed <= 4.5, elapsed
    # The timeout is for unauthenticated streams only: the bound one, older now, lives on.
    answer = patient.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    assert_still_serves(quick, credentials)


def test_whitespace_keepalives_are_harmless(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    client.send(" ")
    client.send("\n\t \n")
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    client.send("   \r\n")
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    assert client.drain(wait=0.2) == []
    assert not client.closed


def test_client_closing_its_stream_gets_the_server_close(
    make_client: MakeClient, alice: Credentials
) -> None:
    client = logged_in(make_client, alice)
    client.send("</stream:stream>")
    client.expect_closed()
    leftovers = client.drain()
    assert not [e for e in leftovers if e.tag == STREAM_ERROR], [to_text(e) for e in leftovers]


# -- STARTTLS -------------------------------------------------------------------


def test_starttls_is_required_and_plain_not_offered_before_tls(make_client: MakeClient) -> None:
    client = make_client()
    features = client.open_stream()
    starttls = features.find(clark(NS_TLS, "starttls"))
    assert starttls is not None, to_text(features)
    assert starttls.find(clark(NS_TLS, "required")) is not None, to_text(features)
    assert "PLAIN" not in mechanisms(features), to_text(features)


def test_auth_before_tls_is_encryption_required(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = make_client()
    client.open_stream()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain_payload(*alice)}</auth>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert sasl_condition(failure) == "encryption-required"
    # The same stream can still do the right thing.
    client.starttls()
    client.open_stream()
    client.auth_scram(*alice)
    client.open_stream()
    assert client.bind().startswith(alice[0] + "/")
    assert_still_serves(server, alice)


def test_features_after_starttls(make_client: MakeClient) -> None:
    client = secure_stream(make_client)
    features = client.features
    assert features.find(clark(NS_TLS, "starttls")) is None, to_text(features)
    assert mechanisms(features) == ALL_MECHANISMS, to_text(features)
    bindings = features.find(clark(NS_SASL_CB, "sasl-channel-binding"))
    assert bindings is not None, to_text(features)
    types = {b.get("type") for b in bindings.findall(clark(NS_SASL_CB, "channel-binding"))}
    assert "tls-server-end-point" in types, to_text(features)


def test_direct_tls_offers_sasl_at_once(make_client: MakeClient, alice: Credentials) -> None:
    client = make_client(direct_tls=True)
    features = client.open_stream()
    assert features.find(clark(NS_TLS, "starttls")) is None, to_text(features)
    assert mechanisms(features) == ALL_MECHANISMS, to_text(features)
    client.auth_scram(*alice, mechanism="SCRAM-SHA-256-PLUS")
    client.open_stream()
    assert client.bind("direct").startswith(alice[0] + "/direct")


def test_plain_without_tls_when_allowed_on_loopback(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    relaxed = make_server(c2s={"allow_plaintext_on_loopback": True})
    credentials = relaxed.new_account()
    client = make_client(relaxed)
    features = client.open_stream()
    offered = mechanisms(features)
    assert "PLAIN" in offered, to_text(features)
    assert not [m for m in offered if m.endswith("-PLUS")], offered
    starttls = features.find(clark(NS_TLS, "starttls"))
    if starttls is not None:
        assert starttls.find(clark(NS_TLS, "required")) is None, to_text(features)
    client.auth_plain(*credentials)
    client.open_stream()
    assert client.bind("plain").startswith(credentials[0] + "/plain")
    assert not client.secure
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)


# -- SASL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mechanism",
    ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"],
)
def test_sasl_success(make_client: MakeClient, alice: Credentials, mechanism: str) -> None:
    client = make_client()
    resource = "m-" + mechanism.lower()
    jid = client.login(*alice, resource=resource, mechanism=mechanism)
    assert jid == f"{alice[0]}/{resource}"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"])
def test_wrong_password_is_not_authorized(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, mechanism: str
) -> None:
    client = secure_stream(make_client)
    if mechanism == "PLAIN":
        failure = client.auth_plain(alice[0], "not-the-password", check=False)
    else:
        failure = client.auth_scram(alice[0], "not-the-password", mechanism, check=False)
    assert sasl_condition(failure) == "not-authorized"
    # A retry on the same stream with the right password works (RFC 6120 §6.4.5).
    client.auth_scram(*alice)
    client.open_stream()
    assert client.bind().startswith(alice[0] + "/")
    assert_still_serves(server, alice)


def test_unknown_user_is_not_authorized(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    failure = client.auth_scram("nobody-" + secrets.token_hex(4), "whatever", check=False)
    assert sasl_condition(failure) == "not-authorized"
    client.auth_plain(*alice)
    assert_still_serves(server, alice)


def test_unknown_mechanism_is_invalid_mechanism(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='X-NO-SUCH-THING'>=</auth>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert sasl_condition(failure) == "invalid-mechanism"
    client.auth_scram(*alice)
    assert_still_serves(server, alice)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_authorization_identity_of_another_user_is_invalid_authzid(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, mechanism: str
) -> None:
    """RFC 6120 §6.4.6: a client may not ask to act as an account it did not prove."""
    user, password = alice[0].partition("@")[0], alice[1]
    other = f"someone-else@{server.host}"
    if mechanism == "PLAIN":
        message = f"{other}\0{user}\0{password}".encode()
    else:
        message = f"n,a={other},n={user},r=clientnonce123".encode()
    client = secure_stream(make_client)
    payload = base64.b64encode(message).decode()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{payload}</auth>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert sasl_condition(failure) == "invalid-authzid", to_text(failure)
    # Naming oneself as authzid is fine.
    own = base64.b64encode(f"{alice[0]}\0{user}\0{password}".encode()).decode()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{own}</auth>")
    assert client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}")).tag == clark(
        NS_SASL, "success"
    )


def test_bad_base64_is_incorrect_encoding(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>not*base64!</auth>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert sasl_condition(failure) == "incorrect-encoding"
    assert_still_serves(server, alice)


def test_abort_is_aborted(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    scram = ScramClient(["SCRAM-SHA-256"], alice[0].partition("@")[0], alice[1])
    first = base64.b64encode(scram.get_client_first().encode()).decode()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
    challenge = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert challenge.tag == clark(NS_SASL, "challenge"), to_text(challenge)
    client.send(f"<abort xmlns='{NS_SASL}'/>")
    failure = client.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))
    assert sasl_condition(failure) == "aborted"
    client.auth_scram(*alice)
    client.open_stream()
    assert client.bind().startswith(alice[0] + "/")
    assert_still_serves(server, alice)


def test_three_failures_close_the_stream(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    for _ in range(2):
        failure = client.auth_plain(alice[0], "wrong", check=False)
        assert sasl_condition(failure) == "not-authorized"
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain_payload(alice[0], 'no')}</auth>")
    client.expect_stream_error("policy-violation")
    leftovers = client.drain()
    assert not [e for e in leftovers if e.tag == clark(NS_SASL, "success")]
    assert_still_serves(server, alice)


def test_correct_password_succeeds_after_failures_but_waits(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    slow = make_server(limits={"auth_failure_delay": 0.4, "auth_failure_max_delay": 5.0})
    credentials = slow.new_account()
    for _ in range(2):
        client = secure_stream(make_client, slow)
        with pytest.raises(AuthFailed) as failed:
            client.auth_plain(credentials[0], "wrong")
        assert failed.value.condition == "not-authorized"
    # Two failures from 127.0.0.1: the next answer waits 0.4 * 2 = 0.8 s, then succeeds.
    client = secure_stream(make_client, slow)
    started = time.monotonic()
    client.auth_plain(*credentials)
    waited = time.monotonic() - started
    assert waited >= 0.7, waited
    client.open_stream()
    assert client.bind().startswith(credentials[0] + "/")
    # Success forgives the address: the next login is not held back.
    client = secure_stream(make_client, slow)
    started = time.monotonic()
    client.auth_plain(*credentials)
    assert time.monotonic() - started < 0.4


def test_password_never_logged(
    server: ServerProcess, make_client: MakeClient, account: Credentials
) -> None:
    jid, password = account
    wrong = "wrong-" + secrets.token_urlsafe(9)
    client = secure_stream(make_client)
    client.auth_plain(jid, wrong, check=False)
    client.auth_plain(jid, password)
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        make_client().login(jid, password, mechanism=mechanism)
    log = server.log_text()
    assert log.strip()
    for secret in (password, wrong, plain_payload(jid, password), plain_payload(jid, wrong)):
        assert secret not in log


# -- resource binding ---------------------------------------------------------------


def test_features_after_auth_offer_bind_and_optional_session(
    make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    client.auth_scram(*alice)
    features = client.open_stream()
    assert features.find(clark(NS_BIND, "bind")) is not None, to_text(features)
    session = features.find(clark(NS_SESSION, "session"))
    assert session is not None, to_text(features)
    assert session.find(clark(NS_SESSION, "optional")) is not None, to_text(features)
    assert features.find(clark(NS_SASL, "mechanisms")) is None, to_text(features)


def test_bind_echoes_requested_resource(make_client: MakeClient, alice: Credentials) -> None:
    client = make_client()
    assert client.login(*alice, resource="Balcony") == f"{alice[0]}/Balcony"


def test_empty_bind_gets_generated_resource(make_client: MakeClient, alice: Credentials) -> None:
    first = make_client().login(*alice)
    second = make_client().login(*alice)
    for jid in (first, second):
        bare, _, resource = jid.partition("/")
        assert bare == alice[0]
        assert resource
    assert first != second


def test_same_full_jid_replaces_the_older_session(
    server: ServerProcess, make_client: MakeClient, account: Credentials
) -> None:
    old = logged_in(make_client, account, resource="desk")
    new = make_client()
    assert new.login(*account, resource="desk") == f"{account[0]}/desk"
    old.expect_stream_error("conflict")
    answer = new.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    assert_still_serves(server, account)


def test_stanza_before_bind_is_not_authorized(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = secure_stream(make_client)
    client.auth_scram(*alice)
    client.open_stream()
    client.send("<message to='localhost' type='chat'><body>too early</body></message>")
    client.expect_stream_error("not-authorized")
    assert_still_serves(server, alice)


def test_session_establishment_is_answered(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    answer = client.session()
    assert answer.get("type") == "result"


# -- dispatcher basics -----------------------------------------------------------------


def test_ping_to_server(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    answer = client.iq(PING.replace("<iq ", "<iq id='ping-1' "))
    assert answer.get("type") == "result", to_text(answer)
    assert answer.get("from") == "localhost"
    assert answer.get("to") == client.jid


def test_disco_info_of_server(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    ns = "http://jabber.org/protocol/disco#info"
    answer = client.iq(f"<iq type='get' to='localhost'><query xmlns='{ns}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(clark(ns, "query"))
    assert query is not None, to_text(answer)
    identities = {(i.get("category"), i.get("type")) for i in query.findall(clark(ns, "identity"))}
    assert ("server", "im") in identities, to_text(answer)
    features = {f.get("var") for f in query.findall(clark(ns, "feature"))}
    assert {"urn:xmpp:ping", "jabber:iq:version", ns} <= features, features


def test_software_version_of_server(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    answer = client.iq("<iq type='get' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(clark("jabber:iq:version", "query"))
    assert query is not None, to_text(answer)
    assert query.findtext(clark("jabber:iq:version", "name")), to_text(answer)
    assert query.findtext(clark("jabber:iq:version", "version")), to_text(answer)


def test_unknown_iq_namespace_is_service_unavailable(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = logged_in(make_client, alice)
    answer = client.iq("<iq type='get' to='localhost'><query xmlns='urn:example:nope'/></iq>")
    assert answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer) == ("cancel", "service-unavailable"), to_text(answer)
    assert_still_serves(server, alice)


def test_unsolicited_iq_result_gets_no_answer(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice)
    client.send("<iq type='result' id='nobody-asked' to='localhost'/>")
    assert [to_text(e) for e in client.drain(wait=0.5)] == []
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)


def test_forged_from_is_replaced(make_client: MakeClient, alice: Credentials) -> None:
    client = logged_in(make_client, alice, resource="honest")
    client.send(
        f"<message to='{client.jid}' from='admin@localhost/console' type='chat' id='forged'>"
        "<body>trust me</body></message>"
    )
    received = client.expect(lambda e: e.tag == MESSAGE and e.get("id") == "forged")
    assert received.get("type") == "chat", to_text(received)
    assert received.get("from") == client.jid, to_text(received)
    assert received.findtext(clark(NS_CLIENT, "body")) == "trust me"


def test_iq_without_id_is_bad_request(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = logged_in(make_client, alice)
    client.send("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    answer = client.expect(IQ)
    assert answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer)[1] == "bad-request", to_text(answer)
    assert_still_serves(server, alice)


@pytest.mark.parametrize(
    "to",
    ["a@b@c", "u" * 1024 + "@localhost", "x@" + "h" * 1100],
    ids=["two-ats", "long-node", "long-host"],
)
def test_invalid_to_is_jid_malformed(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, to: str
) -> None:
    client = logged_in(make_client, alice)
    client.send(f"<message to='{to}' type='chat' id='bad-to'><body>x</body></message>")
    answer = client.expect(lambda e: e.get("id") == "bad-to")
    assert answer.tag == MESSAGE and answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer) == ("modify", "jid-malformed"), to_text(answer)
    answer = client.iq(PING)
    assert answer.get("type") == "result", to_text(answer)
    assert_still_serves(server, alice)


def test_message_to_unserved_domain_is_remote_server_not_found(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = logged_in(make_client, alice)
    client.send(
        "<message to='someone@elsewhere.example' type='chat' id='far'><body>hi</body></message>"
    )
    answer = client.expect(lambda e: e.get("id") == "far")
    assert answer.tag == MESSAGE and answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer) == ("cancel", "remote-server-not-found"), to_text(answer)
    assert_still_serves(server, alice)


# -- shutdown ---------------------------------------------------------------------------


def test_sigterm_closes_every_stream_with_system_shutdown(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    doomed = make_server()
    credentials = doomed.new_account()
    first = logged_in(make_client, credentials, target=doomed, resource="one")
    second = logged_in(make_client, credentials, target=doomed, resource="two")
    assert doomed.stop() == 0, doomed.log_text()[-2000:]
    for client in (first, second):
        client.expect_stream_error("system-shutdown")
