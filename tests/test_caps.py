"""XEP-0115 entity capabilities: the hash (checked on the XEP's examples) and its use."""

from __future__ import annotations

import pytest
from support.client import clark, to_text
from support.im import login
from support.pep import (
    CLIENT_NODE,
    NS_CAPS,
    NS_DISCO_INFO,
    announce_caps,
    answer_caps_query,
    caps_ver,
    disco_query,
    interested_in,
    is_caps_query,
)
from twisted.words.xish import domish

from imserver import caps
from imserver.stream.parser import parse_stanza

# XEP-0115 §5.2, the simple generation example.
SIMPLE = """<query xmlns='http://jabber.org/protocol/disco#info'>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

# XEP-0115 §5.3, the complex example: two languages, an extension form.
COMPLEX = """<query xmlns='http://jabber.org/protocol/disco#info'>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'>
      <value>urn:xmpp:dataforms:softwareinfo</value>
    </field>
    <field var='ip_version'>
      <value>ipv4</value>
      <value>ipv6</value>
    </field>
    <field var='os'>
      <value>Mac</value>
    </field>
    <field var='os_version'>
      <value>10.5.1</value>
    </field>
    <field var='software'>
      <value>Psi</value>
    </field>
    <field var='software_version'>
      <value>0.11</value>
    </field>
  </x>
</query>"""


def query(xml: str) -> domish.Element:
    return parse_stanza(xml)


def test_xep_0115_simple_example() -> None:
    assert caps.ver(query(SIMPLE)) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_xep_0115_complex_example() -> None:
    assert caps.ver(query(COMPLEX)) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_sha_256_and_the_helper_agree() -> None:
    features = interested_in("urn:example:n")
    assert caps.ver(query(disco_query(features))) == caps_ver(features)
    assert caps.ver(query(SIMPLE), "sha-256") != caps.ver(query(SIMPLE))


@pytest.mark.parametrize(
    "bad",
    [
        SIMPLE.replace("</query>", "<feature var='http://jabber.org/protocol/muc'/></query>"),
        SIMPLE.replace(
            "</query>", "<identity category='client' name='Exodus 0.9.1' type='pc'/></query>"
        ),
        COMPLEX.replace("var='FORM_TYPE' type='hidden'", "var='FORM_TYPE'"),
        COMPLEX.replace("</query>", COMPLEX[COMPLEX.index("<x") : COMPLEX.index("</x>") + 4])
        + "</query>",
    ],
    ids=["duplicate feature", "duplicate identity", "FORM_TYPE not hidden", "repeated form"],
)
def test_answers_xep_0115_rejects(bad: str) -> None:
    with pytest.raises(caps.InvalidCaps):
        caps.ver(query(bad))


def test_notify_nodes() -> None:
    features = frozenset(interested_in("a", "urn:b"))
    assert caps.notify_nodes(features) == {"a", "urn:b"}


# -- over the wire ----------------------------------------------------------------


def test_server_caps_stream_feature_matches_its_disco(make_client, pool) -> None:
    client = make_client()
    client.open_stream()
    client.starttls()
    features = client.open_stream()
    c = features.find(clark(NS_CAPS, "c"))
    assert c is not None and c.get("hash") == "sha-1", to_text(features)
    client.close()

    user = login(make_client, pool.take(1)[0])
    info = user.iq(
        f"<iq type='get' to='{user.client.domain}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    )
    answer = info.find(clark(NS_DISCO_INFO, "query"))
    independent = caps_ver(
        [f.get("var") for f in answer.findall(clark(NS_DISCO_INFO, "feature"))],
        ("server", "im", "", "imserver"),
    )
    assert c.get("ver") == independent
    node = f"{c.get('node')}#{c.get('ver')}"
    by_node = user.iq(
        f"<iq type='get' to='{user.client.domain}'>"
        f"<query xmlns='{NS_DISCO_INFO}' node='{node}'/></iq>"
    )
    assert by_node.find(clark(NS_DISCO_INFO, "query")).get("node") == node
    assert len(list(by_node.find(clark(NS_DISCO_INFO, "query")))) == len(list(answer))


def test_one_query_per_ver(make_client, pool) -> None:
    first = login(make_client, pool.take(1)[0])
    second = login(make_client, pool.take(1)[0])
    features = [*interested_in("urn:example:one-query"), "urn:example:unique-1"]
    assert announce_caps(first, features) is not None
    announce_caps(second, features, answer=False)
    second.assert_nothing(is_caps_query)


def test_a_wrong_hash_is_not_cached(make_client, pool) -> None:
    liar = login(make_client, pool.take(1)[0])
    honest = login(make_client, pool.take(1)[0])
    claimed = caps_ver(["urn:example:claimed"])
    announce = f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{claimed}'/>"
    liar.send(announce + "</presence>")
    answer_caps_query(liar, liar.expect(is_caps_query), ["urn:example:something-else"])
    liar.sync()
    # The next client announcing that ver is asked again: the lie was not cached.
    honest.send(announce + "</presence>")
    honest.expect(is_caps_query)


def test_one_open_query_per_client(make_client, pool) -> None:
    """A client cycling through vers without answering is asked once, not once per ver."""
    user = login(make_client, pool.take(1)[0])
    for n in range(3):
        ver = caps_ver([f"urn:example:cycle-{n}"])
        user.send(
            f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{ver}'/>"
            "</presence>"
        )
    first = user.expect(is_caps_query)
    user.assert_nothing(is_caps_query)
    # Once it answers, its next new ver is asked about.
    answer_caps_query(user, first, ["urn:example:cycle-0"])
    announce_caps(user, ["urn:example:cycle-final"])
