"""The client side of SASL2 (XEP-0388), Bind2 (XEP-0386) and FAST (XEP-0484), from the XEPs.

Shares no code with the server: scramp for SCRAM, the standard library's
hmac for HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht), ElementTree for XML.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET

from scramp import ScramClient

from support.client import clark, to_text
from support.sm import SMClient

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"


def sasl2(local: str) -> str:
    return clark(NS_SASL2, local)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def _data(element: ET.Element | None) -> bytes:
    text = (element.text or "").strip() if element is not None else ""
    return b"" if text in ("", "=") else base64.b64decode(text)


class SASL2Client(SMClient):
    """An SMClient that logs in with SASL2."""

    def start(self) -> ET.Element:
        """Connect, STARTTLS, and return the <authentication/> feature."""
        self.connect()
        features = self.open_stream()
        if features.find(clark(NS_TLS, "starttls")) is not None:
            self.starttls()
            features = self.open_stream()
        authentication = features.find(sasl2("authentication"))
        if authentication is None:
            self._fail(f"no SASL2 offered: {to_text(features)}")
        return authentication

    def authenticate(
        self, mechanism: str, initial: bytes, inline: str = "", agent: str | None = "agent-1"
    ) -> ET.Element:
        """Send <authenticate/>; return the first answer (challenge, success or failure)."""
        user_agent = (
            f"<user-agent id='{agent}'><software>tests</software><device>pytest</device>"
            "</user-agent>"
            if agent
            else ""
        )
        self.send(
            f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
            f"<initial-response>{_b64(initial)}</initial-response>{user_agent}{inline}"
            "</authenticate>"
        )
        return self._answer()

    def scram(
        self, user: str, password: str, inline: str = "", mechanism: str = "SCRAM-SHA-256", **kw
    ) -> ET.Element:
        """SCRAM over SASL2; verifies the server's signature in <additional-data/>."""
        scram = ScramClient([mechanism], user.partition("@")[0], password)
        answer = self.authenticate(mechanism, scram.get_client_first().encode(), inline, **kw)
        if answer.tag != sasl2("challenge"):
            return answer
        scram.set_server_first(_data(answer).decode())
        self.send(
            f"<response xmlns='{NS_SASL2}'>{_b64(scram.get_client_final().encode())}</response>"
        )
        answer = self._answer()
        if answer.tag == sasl2("success"):
            scram.set_server_final(_data(answer.find(sasl2("additional-data"))).decode())
        return answer

    def fast(
        self, user: str, token: str, inline: str = "", fast_attributes: str = "", **kw
    ) -> ET.Element:
        """HT-SHA-256-NONE with a FAST token; verifies the server's proof."""
        key = token.encode()
        proof = hmac.digest(key, b"Initiator", "sha256")
        initial = user.partition("@")[0].encode() + b"\0" + proof
        inline = f"<fast xmlns='{NS_FAST}'{fast_attributes}/>" + inline
        answer = self.authenticate("HT-SHA-256-NONE", initial, inline, **kw)
        if answer.tag == sasl2("success"):
            expected = hmac.digest(key, b"Responder", "sha256")
            got = _data(answer.find(sasl2("additional-data")))
            assert hmac.compare_digest(got, expected), "the server's HT proof is wrong"
        return answer

    def _answer(self) -> ET.Element:
        return self.expect(lambda e: e.tag.startswith(f"{{{NS_SASL2}}}"))


def token_of(success: ET.Element) -> str | None:
    element = success.find(clark(NS_FAST, "token"))
    return element.get("token") if element is not None else None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
