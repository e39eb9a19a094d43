"""XEP-0220 server dialback keys, derived as XEP-0185 recommends.

key = HEX(HMAC-SHA256(HEX(SHA256(secret)), receiving + " " + originating + " " + stream id))

The secret is configured or random per start: a key only has to be checked by
the server that made it, while the stream it names is open. Keys are compared
in constant time so a peer cannot learn one byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"


class DialbackKeys:
    def __init__(self, secret: str = "") -> None:
        secret = secret or secrets.token_hex(32)
        self._key = hashlib.sha256(secret.encode()).hexdigest().encode()

    def make(self, receiving: str, originating: str, stream_id: str) -> str:
        message = f"{receiving} {originating} {stream_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, key: str, receiving: str, originating: str, stream_id: str) -> bool:
        expected = self.make(receiving, originating, stream_id)
        return hmac.compare_digest(expected.encode(), key.strip().encode())
