"""XEP-0077 In-Band Registration on the wire: sign up, password change, account removal.

Two servers per module: one with registration on, one that lists the plugin
with registration off (the operator's default).
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from support.client import (
    PRESENCE,
    AuthFailed,
    RawClient,
    clark,
    stanza_error,
    to_text,
)
from support.server import ServerProcess

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
PLUGINS = ["sessions", "disco", "ping", "register", "roster", "presence", "subscriptions"]
PING = "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>"


def _server(tmp_path_factory: pytest.TempPathFactory, allow: bool) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("register"),
        server={"plugins": PLUGINS, "allow_registration": allow},
    )
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, allow=True)


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, allow=False)


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    """Clients a test opened; all closed at teardown."""
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        client.close()


# -- helpers ----------------------------------------------------------------------


def connect(server: ServerProcess, clients: list[RawClient]) -> RawClient:
    client = RawClient.for_server(server).connect()
    clients.append(client)
    return client


def secure(server: ServerProcess, clients: list[RawClient]) -> RawClient:
    """A client after STARTTLS, with its post-TLS features in C{client.features}."""
    client = connect(server, clients)
    client.open_stream()
    client.starttls()
    client.open_stream()
    return client


def register_iq(username: str | None, password: str | None, extra: str = "") -> str:
    fields = extra
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<iq type='set'><query xmlns='{NS_REGISTER}'>{fields}</query></iq>"


def error_of(answer: ET.Element) -> tuple[str | None, str | None]:
    assert answer.get("type") == "error", to_text(answer)
    return stanza_error(answer)


def new_name() -> str:
    return "new-" + secrets.token_hex(4)


def sign_up(server: ServerProcess, clients: list[RawClient]) -> tuple[str, str]:
    """Register a fresh account in-band; returns (bare JID, password)."""
    username, password = new_name(), "pw-" + secrets.token_urlsafe(9)
    client = secure(server, clients)
    answer = client.iq(register_iq(username, password))
    assert answer.get("type") == "result", to_text(answer)
    client.close()
    return f"{username}@{server.host}", password


def login(
    server: ServerProcess,
    clients: list[RawClient],
    jid: str,
    password: str,
    mechanism: str = "SCRAM-SHA-256",
) -> RawClient:
    client = connect(server, clients)
    client.login(jid, password, resource="r-" + secrets.token_hex(3), mechanism=mechanism)
    return client


def login_fails(server: ServerProcess, clients: list[RawClient], jid: str, password: str) -> None:
    with pytest.raises(AuthFailed) as failed:
        login(server, clients, jid, password)
    assert failed.value.condition == "not-authorized"


def disco_features(client: RawClient, host: str) -> set[str]:
    answer = client.iq(f"<iq type='get' to='{host}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(clark(NS_DISCO_INFO, "query"))
    return {f.get("var") for f in query.findall(clark(NS_DISCO_INFO, "feature"))}


# -- registration on: signing up ------------------------------------------------------


def test_feature_advertised_after_tls_and_form_served(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    client = connect(open_server, clients)
    before_tls = client.open_stream()
    assert before_tls.find(clark(NS_FEATURE, "register")) is None, to_text(before_tls)
    client.starttls()
    features = client.open_stream()
    assert features.find(clark(NS_FEATURE, "register")) is not None, to_text(features)

    answer = client.iq(f"<iq type='get'><query xmlns='{NS_REGISTER}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(clark(NS_REGISTER, "query"))
    names = [child.tag for child in query]
    assert names == [clark(NS_REGISTER, n) for n in ("instructions", "username", "password")]
    assert (query.findtext(clark(NS_REGISTER, "instructions")) or "").strip()
    assert query.find(clark(NS_REGISTER, "registered")) is None


def test_register_then_log_in_on_the_same_stream(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    name = "Sign-Up-" + secrets.token_hex(3)
    client = secure(open_server, clients)
    answer = client.iq(register_iq(name, "s3cret pass"))
    assert answer.get("type") == "result", to_text(answer)
    assert len(answer) == 0, to_text(answer)

    # XEP-0077 §3.1.1: the new identity authenticates right away, on this stream.
    client.auth_scram(name, "s3cret pass")
    client.open_stream()
    jid = client.bind("here")
    assert jid == f"{name.lower()}@{open_server.host}/here"  # the username was nodeprepped
    assert client.iq(PING).get("type") == "result"

    # And on a new connection, with another mechanism.
    other = login(
        open_server, clients, f"{name.lower()}@{open_server.host}", "s3cret pass", "PLAIN"
    )
    assert other.iq(PING).get("type") == "result"


def test_duplicate_username_is_a_conflict(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    jid, password = sign_up(open_server, clients)
    username = jid.partition("@")[0]
    client = secure(open_server, clients)
    # Same name in other case: the same account after nodeprep.
    answer = client.iq(register_iq(username.upper(), "Other-Password-1"))
    assert error_of(answer) == ("cancel", "conflict")
    # The error does not echo the request, so the password does not travel back.
    assert b"Other-Password-1" not in ET.tostring(answer)
    # The existing account keeps its password.
    login(open_server, clients, jid, password)
    login_fails(open_server, clients, jid, "Other-Password-1")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, "pw-1"),
        ("", "pw-1"),
        ("   ", "pw-1"),
        ("has space", "pw-1"),
        ("at@sign", "pw-1"),
        ("slash/name", "pw-1"),
        ("x" * 1024, "pw-1"),
        ("{name}", None),
        ("{name}", ""),
        ("{name}", "private\ue000use"),
    ],
    ids=[
        "no-username",
        "empty-username",
        "blank-username",
        "space",
        "at-sign",
        "slash",
        "too-long",
        "no-password",
        "empty-password",
        "prohibited-password",
    ],
)
def test_missing_or_invalid_fields_are_not_acceptable(
    open_server: ServerProcess,
    clients: list[RawClient],
    username: str | None,
    password: str | None,
) -> None:
    name = new_name()
    if username is not None:
        username = username.replace("{name}", name)
    client = secure(open_server, clients)
    answer = client.iq(register_iq(username, password))
    assert error_of(answer) == ("modify", "not-acceptable")
    # The stream is still usable: a valid registration on it succeeds.
    answer = client.iq(register_iq(name, "pw-ok"))
    assert answer.get("type") == "result", to_text(answer)


def test_one_new_account_per_connection(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    first, second = new_name(), new_name()
    client = secure(open_server, clients)
    assert client.iq(register_iq(first, "pw-first")).get("type") == "result"
    answer = client.iq(register_iq(second, "pw-second"))
    assert error_of(answer) == ("modify", "not-acceptable")
    client.close()
    login(open_server, clients, f"{first}@{open_server.host}", "pw-first")
    login_fails(open_server, clients, f"{second}@{open_server.host}", "pw-second")


def test_registration_attempts_are_limited(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    client = secure(open_server, clients)
    for _ in range(5):
        answer = client.iq(register_iq(new_name(), ""))
        assert error_of(answer) == ("modify", "not-acceptable")
    name = new_name()
    answer = client.iq(register_iq(name, "pw-late"))  # valid, but one too many
    assert error_of(answer) == ("modify", "not-acceptable")
    client.close()
    login_fails(open_server, clients, f"{name}@{open_server.host}", "pw-late")
    # A new connection starts afresh.
    client = secure(open_server, clients)
    assert client.iq(register_iq(name, "pw-late")).get("type") == "result"


def test_passwords_never_logged(open_server: ServerProcess, clients: list[RawClient]) -> None:
    marker = "Pw-" + secrets.token_hex(8)
    jid, _ = sign_up(open_server, clients)
    client = secure(open_server, clients)
    client.iq(register_iq(jid.partition("@")[0], marker + "-conflict"))
    client.iq(register_iq("bad name", marker + "-invalid"))
    name = new_name()
    client.iq(register_iq(name, marker + "-created"))
    user = login(open_server, clients, f"{name}@{open_server.host}", marker + "-created")
    answer = user.iq(register_iq(name, marker + "-changed"))
    assert answer.get("type") == "result", to_text(answer)
    user.iq(f"<iq type='set'><query xmlns='{NS_REGISTER}'><remove/></query></iq>")
    user.expect_stream_error("not-authorized")
    log = open_server.log_text()
    assert f"{name}@{open_server.host} registered in-band" in log  # the log is the right one
    assert marker not in log


def test_register_before_tls_is_refused(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    name = new_name()
    client = connect(open_server, clients)
    client.open_stream()
    # The password must not cross an unencrypted stream where TLS is required.
    answer = client.iq(register_iq(name, "pw-plain"))
    assert error_of(answer) == ("auth", "not-authorized")
    client.close()
    login_fails(open_server, clients, f"{name}@{open_server.host}", "pw-plain")


def test_remove_before_login_is_unexpected(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    client = secure(open_server, clients)
    answer = client.iq(f"<iq type='set'><query xmlns='{NS_REGISTER}'><remove/></query></iq>")
    assert error_of(answer) == ("wait", "unexpected-request")


def test_disco_lists_registration(open_server: ServerProcess, clients: list[RawClient]) -> None:
    client = login(open_server, clients, *sign_up(open_server, clients))
    assert NS_REGISTER in disco_features(client, open_server.host)


# -- registration on: the logged-in user ------------------------------------------------


@pytest.mark.parametrize("to", ["", " to='{host}'", " to='{jid}'"], ids=["no-to", "host", "self"])
def test_registered_user_sees_registration(
    open_server: ServerProcess, clients: list[RawClient], to: str
) -> None:
    jid, password = sign_up(open_server, clients)
    client = login(open_server, clients, jid, password)
    to = to.format(host=open_server.host, jid=jid)
    answer = client.iq(f"<iq type='get'{to}><query xmlns='{NS_REGISTER}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(clark(NS_REGISTER, "query"))
    assert query.find(clark(NS_REGISTER, "registered")) is not None
    assert query.findtext(clark(NS_REGISTER, "username")) == jid.partition("@")[0]
    assert not query.findtext(clark(NS_REGISTER, "password"))  # never shown


def test_password_change(open_server: ServerProcess, clients: list[RawClient]) -> None:
    jid, old = sign_up(open_server, clients)
    username = jid.partition("@")[0]
    client = login(open_server, clients, jid, old)

    # An empty password changes nothing (XEP-0077 §3.3) ...
    answer = client.iq(register_iq(username, ""))
    assert error_of(answer)[1] == "bad-request"
    # ... nor does a change for somebody else.
    answer = client.iq(register_iq("somebody-else", "stolen"))
    assert error_of(answer)[1] == "forbidden"
    login(open_server, clients, jid, old)

    answer = client.iq(
        register_iq(username, "brand-new-pw").replace("<iq ", f"<iq to='{open_server.host}' ")
    )
    assert answer.get("type") == "result", to_text(answer)
    assert client.iq(PING).get("type") == "result"  # the session carries on

    login_fails(open_server, clients, jid, old)
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        login(open_server, clients, jid, "brand-new-pw", mechanism)


def test_remove_needs_remove_alone(open_server: ServerProcess, clients: list[RawClient]) -> None:
    jid, password = sign_up(open_server, clients)
    client = login(open_server, clients, jid, password)
    answer = client.iq(register_iq(jid.partition("@")[0], None, extra="<remove/>"))
    assert error_of(answer)[1] == "bad-request"
    login(open_server, clients, jid, password)  # still there


def test_account_removal(open_server: ServerProcess, clients: list[RawClient]) -> None:
    jid, password = sign_up(open_server, clients)
    first = login(open_server, clients, jid, password)
    second = login(open_server, clients, jid, password)

    answer = first.iq(f"<iq type='set'><query xmlns='{NS_REGISTER}'><remove/></query></iq>")
    assert answer.get("type") == "result", to_text(answer)
    # XEP-0077 §3.2: then a not-authorized stream error on every stream of the account.
    first.expect_stream_error("not-authorized")
    second.expect_stream_error("not-authorized")

    login_fails(open_server, clients, jid, password)
    # The name is free again.
    client = secure(open_server, clients)
    answer = client.iq(register_iq(jid.partition("@")[0], "second-life"))
    assert answer.get("type") == "result", to_text(answer)


def _subscribed_both_ways(alice: RawClient, bob: RawClient, alice_jid: str, bob_jid: str) -> None:
    """Make alice and bob subscribed to each other (RFC 6121 §3.1) over the wire."""
    for client in (alice, bob):
        client.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        client.send("<presence/>")
    for asker, answerer, asker_jid, answerer_jid in (
        (alice, bob, alice_jid, bob_jid),
        (bob, alice, bob_jid, alice_jid),
    ):
        asker.send(f"<presence type='subscribe' to='{answerer_jid}'/>")
        answerer.expect(
            lambda e, j=asker_jid: (
                e.tag == PRESENCE and e.get("type") == "subscribe" and e.get("from") == j
            )
        )
        answerer.send(f"<presence type='subscribed' to='{asker_jid}'/>")
        asker.expect(
            lambda e, j=answerer_jid: (
                e.tag == PRESENCE
                and e.get("type") is None
                and (e.get("from") or "").startswith(j + "/")
            )
        )


def test_removal_cancels_subscriptions(
    open_server: ServerProcess, clients: list[RawClient]
) -> None:
    alice_jid, alice_pw = sign_up(open_server, clients)
    bob_jid, bob_pw = sign_up(open_server, clients)
    alice = login(open_server, clients, alice_jid, alice_pw)
    bob = login(open_server, clients, bob_jid, bob_pw)
    _subscribed_both_ways(alice, bob, alice_jid, bob_jid)
    bob.drain(0.2)

    alice.iq(f"<iq type='set'><query xmlns='{NS_REGISTER}'><remove/></query></iq>")
    alice.expect_stream_error("not-authorized")

    def from_alice(type_: str):
        return lambda e: (
            e.tag == PRESENCE
            and e.get("type") == type_
            and (e.get("from") or "").startswith(alice_jid)
        )

    bob.expect(from_alice("unavailable"))
    bob.expect(from_alice("unsubscribe"))
    bob.expect(from_alice("unsubscribed"))
    roster = bob.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    item = roster.find(f"{{jabber:iq:roster}}query/{{jabber:iq:roster}}item[@jid='{alice_jid}']")
    assert item is None or item.get("subscription") == "none", to_text(roster)


# -- registration off -------------------------------------------------------------------------


def test_off_no_feature_and_service_unavailable(
    closed_server: ServerProcess, clients: list[RawClient]
) -> None:
    name = new_name()
    client = secure(closed_server, clients)
    assert client.features.find(clark(NS_FEATURE, "register")) is None, to_text(client.features)
    answer = client.iq(f"<iq type='get'><query xmlns='{NS_REGISTER}'/></iq>")
    assert error_of(answer) == ("cancel", "service-unavailable")
    answer = client.iq(register_iq(name, "pw-x"))
    assert error_of(answer) == ("cancel", "service-unavailable")
    client.close()
    login_fails(closed_server, clients, f"{name}@{closed_server.host}", "pw-x")


def test_off_logged_in_user_cannot_change_or_remove(
    closed_server: ServerProcess, clients: list[RawClient]
) -> None:
    jid, password = closed_server.new_account("off")
    client = login(closed_server, clients, jid, password)
    assert NS_REGISTER not in disco_features(client, closed_server.host)
    answer = client.iq(f"<iq type='get'><query xmlns='{NS_REGISTER}'/></iq>")
    assert error_of(answer) == ("cancel", "service-unavailable")
    answer = client.iq(register_iq(jid.partition("@")[0], "changed"))
    assert error_of(answer) == ("cancel", "not-allowed")
    answer = client.iq(f"<iq type='set'><query xmlns='{NS_REGISTER}'><remove/></query></iq>")
    assert error_of(answer) == ("cancel", "not-allowed")
    assert client.iq(PING).get("type") == "result"
    login(closed_server, clients, jid, password)
    login_fails(closed_server, clients, jid, "changed")
