"""XEP-0388 SASL2 with XEP-0484 FAST: authenticate, resume or bind in one exchange.

SASL2 is offered beside SASL1 (which is unchanged), with the same mechanisms,
in <authentication xmlns='urn:xmpp:sasl:2'/>. The client's <authenticate/>
carries its initial response, a <user-agent id/> and inline requests; after
the last challenge the <success/> carries the server's final data, the
authorised JID and the inline answers, and the stream goes on without a
restart. Inline requests are C{("inline", ns, name)} events: XEP-0198
<resume/> (the sm plugin), XEP-0386 <bind/> (the bind2 plugin, which passes on
its own inline requests); a resumption that succeeds skips the bind.

FAST: a client that asks with <request-token mechanism='HT-SHA-256-NONE'/>
gets a token in <success/>; on its next connection it authenticates with
HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht: one HMAC, no key derivation,
no round trip). Tokens are per client (the user-agent id) and kept hashed.
They are longer than SHA-256's 64-byte block, so HMAC keys with the token's
SHA-256, and that hash is all the server keeps (note: to this mechanism the
hash is as good as the token, as any HMAC-verifying server's secret is).
A token past half its lifetime is rotated: the new one comes in <success/>
and the old one stays valid until the new one is used; <fast invalidate/>
revokes the one used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import lang
from imserver.credentials import FastToken
from imserver.interfaces import IFastTokenStore, IFeature
from imserver.stream import sasl

log = Logger()

NS_SASL2 = "urn:xmpp:sasl:2"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"  # the failure conditions
NS_FAST = "urn:xmpp:fast:0"
NS_SM = "urn:xmpp:sm:3"
FAST_MECHANISMS = ("HT-SHA-256-NONE",)
#: Elements of <authenticate/> that are SASL2's own, not inline requests.
_OWN = frozenset(((NS_SASL2, "initial-response"), (NS_SASL2, "user-agent")))


def _b64(element: domish.Element | None) -> bytes | None:
    """The base64 payload of an element: None when absent, b'' for '=' or empty."""
    if element is None:
        return None
    text = str(element).strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise sasl.SASLFailure("incorrect-encoding") from None


def _with_data(name: str, data: bytes | None) -> domish.Element:
    element = domish.Element((NS_SASL2, name))
    if data:
        element.addContent(base64.b64encode(data).decode("ascii"))
    return element


def _child(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    return next(element.elements(uri, name), None)


class FastMechanism:
    """HT-SHA-256-NONE over the stored token hashes of one client."""

    name = "HT-SHA-256-NONE"

    def __init__(self, store: IFastTokenStore, host: str, client: str | None) -> None:
        self.store = store
        self.host = host
        self.client = client
        #: The token the client proved it holds, and all of this client's tokens.
        self.used: FastToken | None = None
        self.tokens: list[FastToken] = []

    @defer.inlineCallbacks
    def start(self, data: bytes | None):
        if not data or b"\0" not in data:
            raise sasl.SASLFailure("malformed-request")
        authcid, _, proof = data.partition(b"\0")
        try:
            username = sasl.prep_username(authcid.decode("utf-8"))
        except UnicodeDecodeError:
            raise sasl.SASLFailure("malformed-request") from None
        if self.client is None:
            raise sasl.SASLFailure("not-authorized", "FAST needs a <user-agent id/>")
        tokens = self.tokens = yield self.store.get_fast_tokens(username, self.host, self.client)
        for token in tokens:
            key = bytes.fromhex(token.token_hash)
            if token.mechanism != self.name:
                continue
            if hmac.compare_digest(hmac.digest(key, b"Initiator", "sha256"), proof):
                if token.expiry <= time.time():
                    raise sasl.SASLFailure("credentials-expired")
                self.used = token
                return sasl.Success(username, hmac.digest(key, b"Responder", "sha256"))
        raise sasl.SASLFailure("not-authorized")

    def step(self, data: bytes | None):
        raise sasl.SASLFailure("malformed-request")  # one round trip only


@dataclass
class Attempt:
    """One SASL2 exchange on a stream."""

    request: domish.Element
    mechanism: object
    client: str | None
    fast: FastMechanism | None = None
    inline: list[domish.Element] = field(default_factory=list)


@implementer(IPlugin, IFeature)
class SASL2:
    name = "sasl2"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        options = server.options(self.name)
        #: Seconds a FAST token is valid; past half of it, the next use rotates it.
        self.token_lifetime = options.positive_int("fast_token_lifetime", 14 * 24 * 3600)
        #: FAST needs a store that keeps tokens.
        self.fast = options.bool("fast", True) and IFastTokenStore.providedBy(server.store)
        self.attempts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        server.add_stream_feature("preauth", self.feature)
        dispatcher = server.dispatcher
        dispatcher.on(("negotiate", NS_SASL2, "authenticate"), self.authenticate)
        dispatcher.on(("negotiate", NS_SASL2, "response"), self.response)
        dispatcher.on(("negotiate", NS_SASL2, "abort"), self.abort)

    def feature(self, stream) -> domish.Element:
        authentication = domish.Element((NS_SASL2, "authentication"))
        for name in stream.authenticator.offer.mechanisms:
            authentication.addElement("mechanism", content=name)
        inline = authentication.addElement("inline")
        for factory in self.server.stream_features["sasl2"]:
            element = factory(stream)
            if element is not None:
                inline.addChild(element)
        if self.fast:
            fast = inline.addElement((NS_FAST, "fast"))
            for name in FAST_MECHANISMS:
                fast.addElement("mechanism", content=name)
        return authentication

    # -- the exchange --------------------------------------------------------

    def authenticate(self, event):
        stream, request = event.stream, event.stanza
        auth = stream.authenticator
        if auth.username is not None:
            failure = sasl.SASLFailure("malformed-request", "already authenticated")
            return self._fail(stream, failure)
        if not (stream.secure or stream.plaintext_allowed):
            return self._fail(stream, sasl.SASLFailure("encryption-required"))
        name = request.getAttribute("mechanism", "")
        agent = _child(request, NS_SASL2, "user-agent")
        client = agent.getAttribute("id") if agent is not None else None
        try:
            data = _b64(_child(request, NS_SASL2, "initial-response"))
            if name in FAST_MECHANISMS and self.fast:
                mechanism = fast = FastMechanism(self.server.store, auth.host, client)
            else:
                mechanism, fast = auth.make_mechanism(name), None
        except sasl.SASLFailure as failure:
            return self._fail(stream, failure)
        attempt = Attempt(request, mechanism, client, fast)
        attempt.inline = [c for c in request.elements() if (c.uri, c.name) not in _OWN]
        self.attempts[stream] = attempt
        return self._step(stream, attempt, mechanism.start, data)

    def response(self, event):
        stream = event.stream
        attempt = self.attempts.get(stream)
        if attempt is None or stream.authenticator.username is not None:
            return self._fail(stream, sasl.SASLFailure("malformed-request"))
        try:
            data = _b64(event.stanza)
        except sasl.SASLFailure as failure:
            return self._fail(stream, failure)
        return self._step(stream, attempt, attempt.mechanism.step, data)

    def abort(self, event):
        return self._fail(event.stream, sasl.SASLFailure("aborted"))

    def _step(self, stream, attempt: Attempt, step, data) -> defer.Deferred:
        d = stream.authenticator.run_step(step, data)
        d.addCallback(self._stepped, stream, attempt)
        d.addErrback(self._failed, stream)
        return d

    def _stepped(self, result, stream, attempt: Attempt):
        if stream.closed:
            return None
        if isinstance(result, sasl.Challenge):
            stream.send_stanza(_with_data("challenge", result.data))
            return None
        return self._succeed(stream, attempt, result)

    def _failed(self, failure, stream) -> None:
        if failure.check(sasl.SASLFailure):
            return self._fail(stream, failure.value)
        log.failure("SASL2 failed", failure)
        return self._fail(stream, sasl.SASLFailure("temporary-auth-failure"))

    def _fail(self, stream, failure: sasl.SASLFailure) -> bool:
        self.attempts.pop(stream, None)
        if stream.closed:
            return True
        element = domish.Element((NS_SASL2, "failure"))
        element.addElement((NS_SASL, failure.condition))
        if failure.text:
            element.addElement("text", content=failure.text)[lang.XML_LANG] = lang.DEFAULT
        stream.send_stanza(element)
        stream.authenticator.count_failure(failure.condition)
        return True

    # -- success: tokens, inline requests, the answer --------------------------------

    @defer.inlineCallbacks
    def _succeed(self, stream, attempt: Attempt, result: sasl.Success):
        self.attempts.pop(stream, None)
        auth = stream.authenticator
        token = None
        if self.fast:
            token = yield self._tokens(auth.host, result.username, attempt)
        if stream.closed:
            return
        auth.authenticated_as(result.username)
        success = _with_data("success", None)
        if result.data:
            success.addElement("additional-data", content=base64.b64encode(result.data).decode())
        identifier = success.addElement("authorization-identifier")
        answers = self._inline(stream, attempt.inline)
        session = stream.session
        bare = f"{auth.username}@{auth.host}"
        identifier.addContent(session.full if session is not None else bare)
        for answer in answers:
            success.addChild(answer)
        if token is not None:
            success.addChild(token)
        stream.send_stanza(success)

    def _inline(self, stream, requests: list[domish.Element]) -> list[domish.Element]:
        """Answer the inline requests: a resumption first; a bind only if it did not resume."""
        dispatcher = self.server.dispatcher
        answers = []
        resumed = False
        for request in requests:
            if (request.uri, request.name) == (NS_SM, "resume"):
                answer = dispatcher.dispatch_inline(request, stream)
                if isinstance(answer, domish.Element):
                    answers.append(answer)
                    resumed = answer.name == "resumed"
        for request in requests:
            if request.uri in (NS_SM, NS_FAST) or resumed:
                continue
            answer = dispatcher.dispatch_inline(request, stream)
            if isinstance(answer, domish.Element):
                answers.append(answer)
        return answers

    @defer.inlineCallbacks
    def _tokens(self, host: str, user: str, attempt: Attempt):
        """Issue, rotate or revoke FAST tokens; the <token/> to send, if any (XEP-0484 §3)."""
        store = self.server.store
        request = attempt.request
        asked = _child(request, NS_FAST, "request-token")
        wanted = asked.getAttribute("mechanism") if asked is not None else None
        if wanted is not None and wanted not in FAST_MECHANISMS:
            wanted = None
        fast = attempt.fast
        client = attempt.client
        if client is None:
            return None
        if fast is None or fast.used is None:  # a password login
            if wanted is None:
                return None
            token, stored = self._new_token(wanted)
            yield store.replace_fast_tokens(user, host, client, [], stored)
            return token
        used = fast.used
        usage = _child(request, NS_FAST, "fast")
        if usage is not None and usage.getAttribute("invalidate") in ("true", "1"):
            keep: list[str] = []
        else:
            keep = [used.token_hash]
        due = used.expiry - time.time() < self.token_lifetime / 2
        if wanted is None and (not keep or not due):
            # Tokens older than the one used are void; newer ones stay (XEP-0484 §3.5).
            if keep:
                keep += [t.token_hash for t in fast.tokens if t.expiry > used.expiry]
            if len(keep) < len(fast.tokens):  # most logins: nothing to write
                yield store.replace_fast_tokens(user, host, client, keep, None)
            return None
        token, stored = self._new_token(wanted or used.mechanism)
        # The used token stays valid until the new one is used; unused others go.
        yield store.replace_fast_tokens(user, host, client, keep, stored)
        return token

    def _new_token(self, mechanism: str) -> tuple[domish.Element, FastToken]:
        secret = secrets.token_urlsafe(72)  # 96 characters: longer than SHA-256's block
        expiry = int(time.time()) + self.token_lifetime
        element = domish.Element((NS_FAST, "token"))
        element["token"] = secret
        element["expiry"] = datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        stored = FastToken(hashlib.sha256(secret.encode()).hexdigest(), mechanism, expiry)
        return element, stored


feature = SASL2()
