"""Presence subscription states as one declarative table (RFC 6121 Appendix A).

Everything here is pure: no I/O and no Twisted. The presence handlers ask
L{transition} what an outbound or inbound C{subscribe}, C{subscribed},
C{unsubscribe} or C{unsubscribed} stanza does to the user's relationship with
one contact, act on the returned L{Outcome}, and store the result with
L{apply}, so the state rules live in exactly one place: L{TABLE}.

A L{State} is the user's view of one contact, one of the nine states of
RFC 6121 A.1. It is built from two stores:

  - the roster item (L{RosterItem}): C{subscription} and C{ask} (= Pending Out);
  - L{Roster.pending_in}: whether the contact's own request is waiting for the
    user's answer (= Pending In).

A contact that is not on the roster at all is in state "None": the RFC treats
the two alike ("not yet in the contact's roster or is in the contact's roster
with a state of "None"", §3.2.2). It may still be Pending In, because an
inbound request does not create a roster item; the server only notes the
request (A.1, "None + Pending In": the server "MUST NOT create a roster item
for the contact" and waits until the user approves).
L{item_state} does that mapping and L{apply} the reverse one: it creates an
item only once there is something to store (an C{ask}, a pre-approval or a
subscription) and never removes one. RFC 6121 has no subscription stanza that
deletes a roster item; only a roster set with subscription='remove' does (§2.5).

Pre-approval (RFC 6121 §3.4, new since RFC 3921) is the roster item's
C{approved} flag. It is passed to L{transition} alongside the state because it
changes the answer for exactly two events: an outbound C{subscribed} records
it, and an inbound C{subscribe} consumes it. This module assumes the server
supports pre-approval and advertises the C{urn:xmpp:features:pre-approval}
stream feature.

Where RFC 3921 §9 and RFC 6121 differ, RFC 6121 is followed; the differences
are marked in the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from imserver.roster import RosterItem

__all__ = [
    "ALL_STATES",
    "BOTH",
    "DIRECTIONS",
    "FROM",
    "FROM_PENDING_OUT",
    "KINDS",
    "NONE",
    "NONE_PENDING_IN",
    "NONE_PENDING_OUT",
    "NONE_PENDING_OUT_IN",
    "TABLE",
    "TO",
    "TO_PENDING_IN",
    "Cell",
    "Outcome",
    "State",
    "apply",
    "item_state",
    "transition",
]

DIRECTIONS = ("outbound", "inbound")
KINDS = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")

# (subscription, pending_out, pending_in) of the nine states of RFC 6121 A.1.
# The others cannot exist: a pending outbound request means the user is not yet
# subscribed to the contact, a pending inbound one that the contact is not yet
# subscribed to the user.
_VALID = frozenset(
    {
        ("none", False, False),
        ("none", True, False),
        ("none", False, True),
        ("none", True, True),
        ("to", False, False),
        ("to", False, True),
        ("from", False, False),
        ("from", True, False),
        ("both", False, False),
    }
)


@dataclass(frozen=True)
class State:
    """The user's subscription state toward one contact (RFC 6121 A.1)."""

    subscription: str
    pending_out: bool = False
    pending_in: bool = False

    def __post_init__(self) -> None:
        if (self.subscription, self.pending_out, self.pending_in) not in _VALID:
            raise ValueError(f"not one of the nine subscription states: {self!r}")

    @property
    def has_from(self) -> bool:
        """The contact receives the user's presence."""
        return self.subscription in ("from", "both")


NONE = State("none")
NONE_PENDING_OUT = State("none", pending_out=True)
NONE_PENDING_IN = State("none", pending_in=True)
NONE_PENDING_OUT_IN = State("none", pending_out=True, pending_in=True)
TO = State("to")
TO_PENDING_IN = State("to", pending_in=True)
FROM = State("from")
FROM_PENDING_OUT = State("from", pending_out=True)
BOTH = State("both")

#: The nine states in the order RFC 6121 A.1 lists them.
ALL_STATES = (
    NONE,
    NONE_PENDING_OUT,
    NONE_PENDING_IN,
    NONE_PENDING_OUT_IN,
    TO,
    TO_PENDING_IN,
    FROM,
    FROM_PENDING_OUT,
    BOTH,
)


@dataclass(frozen=True)
class Outcome:
    """What one subscription stanza does, as answered by L{TABLE}.

    C{send_presence} means the contact's access to the user's presence was
    just granted or withdrawn, so the server sends the user's current presence
    (on a grant, §3.1.5) or presence of type unavailable (on a withdrawal,
    §3.2.2 and §3.3.3) from each of the user's available resources.
    """

    state: State
    approved: bool
    deliver: bool
    push: bool
    auto_reply: str | None
    send_presence: bool


# What a cell does to the pre-approval flag.
KEEP, SET, CLEAR = "keep", "set", "clear"


@dataclass(frozen=True)
class Cell:
    """One cell of the table: the answer for one (state, direction, kind).

    C{if_approved}, where present, replaces the cell when the user has
    pre-approved the contact (§3.4). Whether a roster push is needed is not
    stored: it follows from whether the stored item changes (§2.1.6).
    """

    state: State
    deliver: bool
    auto_reply: str | None = None
    send_presence: bool = False
    approved: str = KEEP
    if_approved: Cell | None = None


# Inbound subscribe from a pre-approved contact: the server answers "subscribed"
# for the user, does not deliver the request, and the contact gains 'from'
# (§3.4: the request is "automatically approved by the user's server"). The
# flag has then served its purpose and is cleared. Sending the user's presence
# follows §3.1.5, since the auto-reply is the user's approval.
def _auto_approve(new: State) -> Cell:
    return Cell(new, deliver=False, auto_reply="subscribed", send_presence=True, approved=CLEAR)


_OUTBOUND_SUBSCRIBE = {
    # A.2.1 / §3.1.2: the request is always routed, whatever the state, so the
    # user can resynchronise with a contact's server that lost the subscription.
    NONE: Cell(NONE_PENDING_OUT, deliver=True),
    NONE_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=True),
    NONE_PENDING_IN: Cell(NONE_PENDING_OUT_IN, deliver=True),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_OUT_IN, deliver=True),
    TO: Cell(TO, deliver=True),
    TO_PENDING_IN: Cell(TO_PENDING_IN, deliver=True),
    FROM: Cell(FROM_PENDING_OUT, deliver=True),
    FROM_PENDING_OUT: Cell(FROM_PENDING_OUT, deliver=True),
    BOTH: Cell(BOTH, deliver=True),
}

_OUTBOUND_UNSUBSCRIBE = {
    # A.2.2 / §3.3.2: always routed; the user's side of the subscription goes.
    NONE: Cell(NONE, deliver=True),
    NONE_PENDING_OUT: Cell(NONE, deliver=True),
    NONE_PENDING_IN: Cell(NONE_PENDING_IN, deliver=True),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_IN, deliver=True),
    TO: Cell(NONE, deliver=True),
    TO_PENDING_IN: Cell(NONE_PENDING_IN, deliver=True),
    FROM: Cell(FROM, deliver=True),
    FROM_PENDING_OUT: Cell(FROM, deliver=True),
    BOTH: Cell(FROM, deliver=True),
}

_OUTBOUND_SUBSCRIBED = {
    # §3.4.2 case 3 (RFC 6121 only; RFC 3921 §9.2 just drops these): with no
    # request pending, "subscribed" is a pre-approval: recorded, pushed, and
    # "the user's server MUST NOT route the presence stanza".
    NONE: Cell(NONE, deliver=False, approved=SET),
    NONE_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=False, approved=SET),
    TO: Cell(TO, deliver=False, approved=SET),
    # §3.4.2 case 2 / A.2.3 / §3.1.5: a normal approval; routed, the contact
    # gains 'from', and the server sends the user's current presence.
    NONE_PENDING_IN: Cell(FROM, deliver=True, send_presence=True, approved=CLEAR),
    NONE_PENDING_OUT_IN: Cell(FROM_PENDING_OUT, deliver=True, send_presence=True, approved=CLEAR),
    TO_PENDING_IN: Cell(BOTH, deliver=True, send_presence=True, approved=CLEAR),
    # §3.4.2 case 1 / A.2.3: already subscribed; "MUST silently ignore".
    FROM: Cell(FROM, deliver=False),
    FROM_PENDING_OUT: Cell(FROM_PENDING_OUT, deliver=False),
    BOTH: Cell(BOTH, deliver=False),
}

_OUTBOUND_UNSUBSCRIBED = {
    # §3.2.2 / A.2.4: with nothing to deny or cancel, the server "SHOULD NOT
    # route" it; if the contact was pre-approved, the pre-approval is cancelled
    # instead (RFC 6121 only, §3.2.2 with §3.4).
    NONE: Cell(NONE, deliver=False, approved=CLEAR),
    NONE_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=False, approved=CLEAR),
    TO: Cell(TO, deliver=False, approved=CLEAR),
    # §3.2.2 / A.2.4: denying a pending request is routed; no presence was
    # shared, so no unavailable is sent.
    NONE_PENDING_IN: Cell(NONE, deliver=True, approved=CLEAR),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_OUT, deliver=True, approved=CLEAR),
    TO_PENDING_IN: Cell(TO, deliver=True, approved=CLEAR),
    # §3.2.2 / A.2.4: cancelling 'from' is routed after presence of type
    # unavailable from each of the user's available resources.
    FROM: Cell(NONE, deliver=True, send_presence=True, approved=CLEAR),
    FROM_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=True, send_presence=True, approved=CLEAR),
    BOTH: Cell(TO, deliver=True, send_presence=True, approved=CLEAR),
}

_INBOUND_SUBSCRIBE = {
    # A.3.1 / §3.1.3: a new request is delivered and remembered as Pending In,
    # unless the user pre-approved the contact (§3.4).
    NONE: Cell(NONE_PENDING_IN, deliver=True, if_approved=_auto_approve(FROM)),
    NONE_PENDING_OUT: Cell(
        NONE_PENDING_OUT_IN, deliver=True, if_approved=_auto_approve(FROM_PENDING_OUT)
    ),
    TO: Cell(TO_PENDING_IN, deliver=True, if_approved=_auto_approve(BOTH)),
    # A.3.1: a repeated request is not delivered again; the stored one stands.
    NONE_PENDING_IN: Cell(NONE_PENDING_IN, deliver=False),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_OUT_IN, deliver=False),
    TO_PENDING_IN: Cell(TO_PENDING_IN, deliver=False),
    # A.3.1 / §3.1.3: the contact already has 'from': not delivered, the server
    # "MUST auto-reply" with subscribed. (RFC 3921 §9.3 said SHOULD.)
    FROM: Cell(FROM, deliver=False, auto_reply="subscribed"),
    FROM_PENDING_OUT: Cell(FROM_PENDING_OUT, deliver=False, auto_reply="subscribed"),
    BOTH: Cell(BOTH, deliver=False, auto_reply="subscribed"),
}

_INBOUND_UNSUBSCRIBE = {
    # A.3.2 / §3.3.3: the contact withdraws its request or its subscription.
    # Where it had 'from', the server also sends it unavailable from each of
    # the user's available resources (§3.3.3 step 3).
    NONE: Cell(NONE, deliver=False),
    NONE_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=False),
    NONE_PENDING_IN: Cell(NONE, deliver=True),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_OUT, deliver=True),
    TO: Cell(TO, deliver=False),
    TO_PENDING_IN: Cell(TO, deliver=True),
    FROM: Cell(NONE, deliver=True, send_presence=True),
    FROM_PENDING_OUT: Cell(NONE_PENDING_OUT, deliver=True, send_presence=True),
    BOTH: Cell(TO, deliver=True, send_presence=True),
}

_INBOUND_SUBSCRIBED = {
    # A.3.3 / §3.1.6: acts only on the user's pending request; otherwise the
    # stanza is dropped, neither delivered nor changing state.
    NONE: Cell(NONE, deliver=False),
    NONE_PENDING_OUT: Cell(TO, deliver=True),
    NONE_PENDING_IN: Cell(NONE_PENDING_IN, deliver=False),
    NONE_PENDING_OUT_IN: Cell(TO_PENDING_IN, deliver=True),
    TO: Cell(TO, deliver=False),
    TO_PENDING_IN: Cell(TO_PENDING_IN, deliver=False),
    FROM: Cell(FROM, deliver=False),
    FROM_PENDING_OUT: Cell(BOTH, deliver=True),
    BOTH: Cell(BOTH, deliver=False),
}

_INBOUND_UNSUBSCRIBED = {
    # A.3.4 / §3.2.3: the contact denies the user's request or cancels the
    # user's subscription; delivered only if there was one of the two.
    NONE: Cell(NONE, deliver=False),
    NONE_PENDING_OUT: Cell(NONE, deliver=True),
    NONE_PENDING_IN: Cell(NONE_PENDING_IN, deliver=False),
    NONE_PENDING_OUT_IN: Cell(NONE_PENDING_IN, deliver=True),
    TO: Cell(NONE, deliver=True),
    TO_PENDING_IN: Cell(NONE_PENDING_IN, deliver=True),
    FROM: Cell(FROM, deliver=False),
    FROM_PENDING_OUT: Cell(FROM, deliver=True),
    BOTH: Cell(FROM, deliver=True),
}

#: The whole state machine: (state, direction, kind) -> Cell, 72 cells.
TABLE: dict[tuple[State, str, str], Cell] = {
    (state, direction, kind): cell
    for (direction, kind), column in {
        ("outbound", "subscribe"): _OUTBOUND_SUBSCRIBE,
        ("outbound", "subscribed"): _OUTBOUND_SUBSCRIBED,
        ("outbound", "unsubscribe"): _OUTBOUND_UNSUBSCRIBE,
        ("outbound", "unsubscribed"): _OUTBOUND_UNSUBSCRIBED,
        ("inbound", "subscribe"): _INBOUND_SUBSCRIBE,
        ("inbound", "subscribed"): _INBOUND_SUBSCRIBED,
        ("inbound", "unsubscribe"): _INBOUND_UNSUBSCRIBE,
        ("inbound", "unsubscribed"): _INBOUND_UNSUBSCRIBED,
    }.items()
    for state, cell in column.items()
}


def transition(state: State, direction: str, kind: str, approved: bool = False) -> Outcome:
    """Look up what one subscription stanza does in C{state}.

    C{approved} is the user's pre-approval of the contact. A roster push is due
    exactly when the stored item changes: its subscription, ask or approved.
    """
    try:
        cell = TABLE[(state, direction, kind)]
    except KeyError:
        raise ValueError(f"no subscription rule for {direction} {kind!r} in {state}") from None
    if approved and cell.if_approved is not None:
        cell = cell.if_approved
    new_approved = {KEEP: approved, SET: True, CLEAR: False}[cell.approved]
    before = (state.subscription, state.pending_out, approved)
    after = (cell.state.subscription, cell.state.pending_out, new_approved)
    return Outcome(
        state=cell.state,
        approved=new_approved,
        deliver=cell.deliver,
        push=before != after,
        auto_reply=cell.auto_reply,
        send_presence=cell.send_presence,
    )


def item_state(item: RosterItem | None, pending_in: bool) -> State:
    """The state of a contact from its roster item and L{Roster.pending_in}.

    No item means state "None" (A.1). Flags that none of the nine states can
    carry (an C{ask} once subscribed, a pending request from a contact that
    already has 'from') are stale and dropped rather than trusted.
    """
    subscription = item.subscription if item is not None else "none"
    ask = item is not None and item.ask
    return State(
        subscription,
        pending_out=ask and subscription in ("none", "from"),
        pending_in=pending_in and subscription in ("none", "to"),
    )


def apply(item: RosterItem | None, contact_jid: str, outcome: Outcome) -> RosterItem | None:
    """The roster item to store after C{outcome}; None means still no item.

    An item is created only once it has something to hold (an ask, a
    pre-approval or a subscription), so an inbound request alone leaves the
    roster untouched (A.1). Existing items are never removed and keep their
    name and groups. C{contact_jid} is used only for a new item. The pending
    inbound request is C{outcome.state.pending_in}, kept in L{Roster.pending_in}.
    """
    subscription = outcome.state.subscription
    ask = outcome.state.pending_out
    if item is None:
        if subscription == "none" and not ask and not outcome.approved:
            return None
        item = RosterItem(contact_jid)
    return item.evolve(subscription=subscription, ask=ask, approved=outcome.approved)
