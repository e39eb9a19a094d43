"""XEP-0054 vCards and the XEP-0398 avatar bridge to XEP-0084, over the wire."""

from __future__ import annotations

import base64
import hashlib

from support.client import clark, to_text
from support.im import login, online, presence, settle, subscribe
from support.pep import error_of, item_ids, items, publish

NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"
DATA = "urn:xmpp:avatar:data"
METADATA = "urn:xmpp:avatar:metadata"
IMAGE = bytes(range(256)) * 4  # not a real PNG: the server never looks inside
IMAGE_B64 = base64.b64encode(IMAGE).decode()
IMAGE_SHA1 = hashlib.sha1(IMAGE).hexdigest()


def vcard_set(user, inner: str):
    return user.iq(f"<iq type='set'><vCard xmlns='{NS_VCARD}'>{inner}</vCard></iq>")


def vcard_get(user, jid: str | None = None):
    to = f" to='{jid}'" if jid else ""
    answer = user.iq(f"<iq type='get'{to}><vCard xmlns='{NS_VCARD}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    return answer.find(clark(NS_VCARD, "vCard"))


def photo_of(vcard) -> tuple[str | None, str | None]:
    photo = vcard.find(clark(NS_VCARD, "PHOTO"))
    if photo is None:
        return None, None
    binval = photo.findtext(clark(NS_VCARD, "BINVAL")) or ""
    return photo.findtext(clark(NS_VCARD, "TYPE")), "".join(binval.split())


def test_vcard_set_and_get(make_client, pool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account)
    assert list(vcard_get(alice)) == []  # nothing stored yet: an empty vCard
    assert vcard_set(alice, "<FN>Alice</FN><NICKNAME>al</NICKNAME>").get("type") == "result"
    assert vcard_get(alice).findtext(clark(NS_VCARD, "FN")) == "Alice"
    bob = login(make_client, bob_account)
    assert vcard_get(bob, alice.bare).findtext(clark(NS_VCARD, "NICKNAME")) == "al"
    # Only the owner sets it; an unknown account has none.
    other = bob.iq(f"<iq type='set' to='{alice.bare}'><vCard xmlns='{NS_VCARD}'/></iq>")
    assert error_of(other)[0] == "forbidden"
    nobody = bob.iq(
        f"<iq type='get' to='nobody@{bob.client.domain}'><vCard xmlns='{NS_VCARD}'/></iq>"
    )
    assert error_of(nobody)[0] == "service-unavailable"


def test_vcard_photo_becomes_pep_avatar(make_client, pool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(bob, alice)
    settle(alice, bob)
    answer = vcard_set(alice, f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{IMAGE_B64}</BINVAL></PHOTO>")
    assert answer.get("type") == "result", to_text(answer)

    meta = items(bob, alice.bare, METADATA)
    assert item_ids(meta) == [IMAGE_SHA1]
    info = meta.find(f".//{clark(METADATA, 'info')}")
    assert (info.get("id"), info.get("bytes"), info.get("type")) == (
        IMAGE_SHA1,
        str(len(IMAGE)),
        "image/png",
    )
    data = items(bob, alice.bare, DATA, f"<item id='{IMAGE_SHA1}'/>")
    assert base64.b64decode(data.find(f".//{clark(DATA, 'data')}").text) == IMAGE

    # XEP-0153: alice's next presence carries the hash (her client did not add it).
    alice.send("<presence><show>away</show></presence>")
    seen = bob.expect(presence(alice.jid))
    assert seen.findtext(f"{clark(NS_UPDATE, 'x')}/{clark(NS_UPDATE, 'photo')}") == IMAGE_SHA1

    # Removing the PHOTO empties the avatar metadata (XEP-0084 §4.6).
    vcard_set(alice, "<FN>Alice</FN>")
    meta = items(bob, alice.bare, METADATA)
    assert meta.find(f".//{clark(METADATA, 'info')}") is None, to_text(meta)


def test_pep_avatar_becomes_vcard_photo(make_client, pool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account)
    vcard_set(alice, "<FN>Alice</FN>")
    data = f"<data xmlns='{DATA}'>{IMAGE_B64}</data>"
    assert publish(alice, DATA, data, IMAGE_SHA1).get("type") == "result"
    info = f"<info id='{IMAGE_SHA1}' bytes='{len(IMAGE)}' type='image/webp'/>"
    answer = publish(alice, METADATA, f"<metadata xmlns='{METADATA}'>{info}</metadata>", IMAGE_SHA1)
    assert answer.get("type") == "result", to_text(answer)

    bob = login(make_client, bob_account)
    vcard = vcard_get(bob, alice.bare)
    assert vcard.findtext(clark(NS_VCARD, "FN")) == "Alice"  # the rest of the vCard is kept
    mime, binval = photo_of(vcard)
    assert mime == "image/webp"
    assert base64.b64decode(binval) == IMAGE
    # And no loop: the metadata node still holds exactly the one item.
    assert item_ids(items(alice, alice.bare, METADATA)) == [IMAGE_SHA1]


def test_size_limits(make_server, make_client) -> None:
    server = make_server(plugin={"vcard": {"max_bytes": 4096, "max_avatar_bytes": 1000}})
    alice = login(make_client, server.new_account(), target=server)
    too_big = vcard_set(alice, "<DESC>" + "x" * 5000 + "</DESC>")
    assert error_of(too_big)[0] == "not-acceptable"
    photo = base64.b64encode(b"\0" * 1500).decode()
    too_big = vcard_set(alice, f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO>")
    assert error_of(too_big)[0] == "not-acceptable"
    bad = vcard_set(alice, "<PHOTO><TYPE>image/png</TYPE><BINVAL>!!notbase64</BINVAL></PHOTO>")
    assert error_of(bad)[0] == "bad-request"
    assert list(vcard_get(alice)) == []  # nothing of it was kept
