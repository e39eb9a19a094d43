"""The plugin API over the wire: a third-party feature, priorities, errors, async handlers.

The plugin below lives outside the project, in a `plugins/` directory (no
__init__.py) on PYTHONPATH, exactly as another distribution would ship one;
the server must find it by name through Twisted's plugin system.
"""

from __future__ import annotations

import textwrap

import pytest
from support.client import RawClient, stanza_error
from support.server import ServerStartError

THIRD_PARTY_PLUGIN = textwrap.dedent(
    """
    from twisted.internet import reactor, task
    from twisted.plugin import IPlugin
    from twisted.words.protocols.jabber.error import StanzaError
    from twisted.words.xish import domish
    from zope.interface import implementer

    from imserver.interfaces import IFeature


    def payload(ns, text):
        element = domish.Element((ns, "query"))
        element.addElement("said", content=text)
        return element


    @implementer(IPlugin, IFeature)
    class Probe:
        name = "probe"
        disco_features = ("urn:test:probe",)

        def attach(self, server):
            on = server.dispatcher.on
            on(("iq", "get", "urn:test:boom", "host"), self.explode)
            on(("iq", "get", "urn:test:order", "host"),
               lambda e: e.answer(payload("urn:test:order", "high")), priority=10)
            on(("iq", "get", "urn:test:order", "host"),
               lambda e: e.answer(payload("urn:test:order", "low")))
            on(("iq", "get", "urn:test:pass", "host"), lambda e: False, priority=10)
            on(("iq", "get", "urn:test:pass", "host"),
               lambda e: e.answer(payload("urn:test:pass", "second")))
            on(("iq", "get", "urn:test:refuse", "host"), self.refuse)
            on(("iq", "get", "urn:test:later", "host"), self.later)
            on(("iq", "get", "urn:test:later-boom", "host"), self.later_boom)

        def explode(self, event):
            return 1 / 0

        def refuse(self, event):
            raise StanzaError("not-allowed", text="no thanks")

        def later(self, event):
            return task.deferLater(
                reactor, 0.05, lambda: event.answer(payload("urn:test:later", "done")))

        def later_boom(self, event):
            return task.deferLater(reactor, 0.05, lambda: 1 / 0)


    feature = Probe()
    """
)

PLUGINS = ["sessions", "disco", "ping", "probe"]


@pytest.fixture
def plugin_server(make_server, tmp_path, monkeypatch):
    package = tmp_path / "thirdparty" / "plugins"
    package.mkdir(parents=True)
    (package / "probe.py").write_text(THIRD_PARTY_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "thirdparty"))
    return make_server(server={"plugins": PLUGINS})


def _client(server) -> RawClient:
    jid, password = server.new_account()
    client = RawClient.for_server(server)
    client.login(jid, password, "probe")
    return client


def _iq(client: RawClient, ns: str):
    return client.iq(f"<iq type='get' id='{ns}' to='localhost'><query xmlns='{ns}'/></iq>")


def _said(response, ns: str) -> str:
    return response.find(f"{{{ns}}}query/{{{ns}}}said").text


def test_third_party_plugin_is_loaded_by_name_and_in_disco(plugin_server):
    with _client(plugin_server) as client:
        info = client.iq(
            "<iq type='get' id='d1' to='localhost'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
        features = {
            f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")
        }
        assert "urn:test:probe" in features
        assert "urn:xmpp:ping" in features
        # Not loaded: version is not in this server's plugin list.
        assert "jabber:iq:version" not in features


def test_higher_priority_handler_answers_first(plugin_server):
    with _client(plugin_server) as client:
        response = _iq(client, "urn:test:order")
        assert response.get("type") == "result"
        assert _said(response, "urn:test:order") == "high"
        # Only one answer: the chain stopped at the first handler.
        assert [e for e in client.drain(0.3) if e.get("id") == "urn:test:order"] == []


def test_handler_returning_false_passes_the_stanza_on(plugin_server):
    with _client(plugin_server) as client:
        assert _said(_iq(client, "urn:test:pass"), "urn:test:pass") == "second"


def test_stanza_error_raised_by_a_handler_becomes_the_reply(plugin_server):
    with _client(plugin_server) as client:
        response = _iq(client, "urn:test:refuse")
        assert response.get("type") == "error"
        assert stanza_error(response) == ("cancel", "not-allowed")


def test_exception_in_plugin_gives_internal_server_error_and_stream_stays_up(plugin_server):
    with _client(plugin_server) as client:
        for ns in ("urn:test:boom", "urn:test:later-boom"):
            response = _iq(client, ns)
            assert response.get("type") == "error"
            assert stanza_error(response)[1] == "internal-server-error"
        ping = client.iq("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert ping.get("type") == "result"
    log = plugin_server.log_text()
    assert "ZeroDivisionError" in log
    assert log.count("failed on") >= 2


def test_asynchronous_handler_answers_later(plugin_server):
    with _client(plugin_server) as client:
        assert _said(_iq(client, "urn:test:later"), "urn:test:later") == "done"


def test_unknown_plugin_name_stops_start_with_one_clear_line(make_server):
    server = make_server(start=False, server={"plugins": ["sessions", "no-such-feature"]})
    with pytest.raises(ServerStartError):
        server.start()
    assert server.process.wait(10) == 1
    lines = server.log_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("imserver: server.plugins: unknown plugin 'no-such-feature'")
