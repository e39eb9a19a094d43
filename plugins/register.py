"""XEP-0077 In-Band Registration: sign up before login, change password, delete the account.

Only active with C{[server] allow_registration = true}. When it is off the
plugin still answers, as the XEP asks: service-unavailable for the form and
for sign-ups, not-allowed for password changes and removals. Passwords are
turned into SCRAM keys in a thread (key derivation must not stall the
reactor), never logged, and never echoed back in error answers. A connection
gets a few attempts and one success (XEP-0077 §3.1.1), so one client cannot
make the server derive keys or create accounts without end.
"""

from __future__ import annotations

import weakref

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.credentials import make_credentials
from imserver.errors import UserExists, UserNotFound
from imserver.interfaces import IFeature

log = Logger()

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
INSTRUCTIONS = "Choose a username and password to register with this server."
#: Registration requests one connection may make before it authenticates.
MAX_ATTEMPTS = 5


class Refusal(StanzaError):
    """A stanza error that does not copy the request back: it may hold a password."""

    def toResponse(self, stanza: domish.Element) -> domish.Element:
        response = xmlstream.toResponse(stanza, "error")
        response.addChild(self.getElement())
        return response


def _stream_feature(stream) -> domish.Element:
    return domish.Element((NS_FEATURE, "register"))


def _fields(query: domish.Element) -> dict[str, str]:
    """The registration fields of a <query/>, by name (text content, may be empty)."""
    return {
        child.name: str(child)
        for child in query.elements()
        if child.uri == NS_REGISTER and child.name in ("username", "password", "remove")
    }


def _localpart(raw: str) -> str:
    """Nodeprep a requested username; Refusal(not-acceptable) when it cannot be one."""
    try:
        username = nodeprep.prepare(raw.strip())
    except UnicodeError:
        raise Refusal("not-acceptable", text="invalid username") from None
    if not username or len(username.encode()) > 1023:
        raise Refusal("not-acceptable", text="invalid username")
    return username


def _credentials(password: str) -> defer.Deferred:
    """Derive the SCRAM keys in a thread; not-acceptable for a password SASLprep refuses."""

    def derive():
        try:
            return make_credentials(password)
        except Exception:  # scramp rejects prohibited characters; say no more than that
            raise Refusal("not-acceptable", text="invalid password") from None

    return threads.deferToThread(derive)


@implementer(IPlugin, IFeature)
class Register:
    name = "register"
    disco_features = (NS_REGISTER,)

    def attach(self, server) -> None:
        self.server = server
        #: Registration requests per unauthenticated stream.
        self.attempts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        on = server.dispatcher.on
        if not server.settings.allow_registration:
            # Listed but switched off: not in disco, not a stream feature, and refused.
            server.disco_features.discard(NS_REGISTER)
            for type_ in ("get", "set"):
                on(("iq", type_, NS_REGISTER, "preauth"), _refuse("service-unavailable"))
            for target in ("self", "host"):
                on(("iq", "get", NS_REGISTER, target), _refuse("service-unavailable"))
                on(("iq", "set", NS_REGISTER, target), _refuse("not-allowed"))
            return
        server.add_stream_feature("preauth", _stream_feature)
        on(("iq", "get", NS_REGISTER, "preauth"), self.form)
        on(("iq", "set", NS_REGISTER, "preauth"), self.register)
        for target in ("self", "host"):
            on(("iq", "get", NS_REGISTER, target), self.registered)
            on(("iq", "set", NS_REGISTER, target), self.change)

    # -- before authentication -------------------------------------------------

    def form(self, event) -> bool:
        _require_secure(event.stream)
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("instructions", content=INSTRUCTIONS)
        query.addElement("username")
        query.addElement("password")
        return event.answer(query)

    @defer.inlineCallbacks
    def register(self, event):
        """Create the account (XEP-0077 §3.1); the client then logs in with it."""
        stream = event.stream
        _require_secure(stream)
        attempts = self.attempts.get(stream, 0)
        if attempts >= MAX_ATTEMPTS:
            raise Refusal("not-acceptable", text="no more registrations on this connection")
        self.attempts[stream] = attempts + 1
        fields = _fields(event.stanza.firstChildElement())
        if "remove" in fields:
            raise Refusal("unexpected-request", text="log in to remove an account")
        username = _localpart(fields.get("username", ""))
        password = fields.get("password", "")
        if not password:
            raise Refusal("not-acceptable", text="a password is required")
        host = stream.authenticator.host
        credentials = yield _credentials(password)
        yield self.server.when_ready()
        try:
            yield self.server.store.create_user(username, host, credentials)
        except UserExists:
            raise Refusal("conflict", text="the username is taken") from None
        self.attempts[stream] = MAX_ATTEMPTS  # one new identity per connection
        log.info("{user}@{host} registered in-band", user=username, host=host)
        return event.answer()

    # -- authenticated -----------------------------------------------------------

    def registered(self, event) -> bool:
        """Show the current registration (the password is never shown)."""
        if not _own_host(event):
            return False
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("registered")
        query.addElement(
            "instructions", content="You are registered; you may change your password."
        )
        query.addElement("username", content=event.sender.user)
        query.addElement("password")
        return event.answer(query)

    def change(self, event):
        if not _own_host(event):
            return False
        query = event.stanza.firstChildElement()
        fields = _fields(query)
        if "remove" in fields:
            if sum(1 for _ in query.elements()) != 1:
                raise Refusal("bad-request", text="<remove/> must be alone")
            return self.remove(event)
        return self.change_password(event, fields)

    @defer.inlineCallbacks
    def change_password(self, event, fields: dict[str, str]):
        """XEP-0077 §3.3: username must be the user's own; an empty password changes nothing."""
        if "username" not in fields or not fields.get("password"):
            raise Refusal("bad-request", text="username and a non-empty password are required")
        user, host = event.sender.user, event.sender.host
        if _localpart(fields["username"].removesuffix(f"@{host}")) != user:
            raise Refusal("forbidden", text="you can only change your own password")
        credentials = yield _credentials(fields["password"])
        try:
            yield self.server.store.set_credentials(user, host, credentials)
        except UserNotFound:
            raise Refusal("registration-required") from None
        log.info("{user}@{host} changed their password in-band", user=user, host=host)
        return event.answer()

    @defer.inlineCallbacks
    def remove(self, event):
        """XEP-0077 §3.2: delete, answer, then end every stream of the account.

        The account's streams close with a not-authorized stream error, as the
        XEP says; contacts hear it leave and lose their subscriptions to it.
        """
        user, host = event.sender.user, event.sender.host
        roster = yield self.server.rosters.get(user, host)
        try:
            yield self.server.store.delete_user(user, host)
        except UserNotFound:
            raise Refusal("registration-required") from None
        log.info("{user}@{host} removed their account in-band", user=user, host=host)
        event.answer()
        for stream in list(self.server.streams):
            authenticator = stream.authenticator
            if authenticator.username == user and authenticator.host == host:
                stream.fail("not-authorized", "the account was removed")
        # Contacts lose their subscriptions to it (the subscriptions plugin listens).
        self.server.dispatcher.fire("user-deleted", user, host, roster)
        return True


def _refuse(condition: str):
    def refuse(event):
        raise Refusal(condition)

    return refuse


def _require_secure(stream) -> None:
    """Registration sends a password: never over a stream that skipped required TLS."""
    if not (stream.secure or stream.plaintext_allowed):
        raise Refusal("not-authorized", text="start TLS first")


def _own_host(event) -> bool:
    """An authenticated user registers only with their own server (iq to it or to themselves)."""
    return event.to.host == event.sender.host


feature = Register()
