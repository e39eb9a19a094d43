"""The subscription state table against RFC 6121 Appendix A, cell by cell.

The expectations are written out by hand from the RFC, not derived from
L{imserver.subscription}, so a wrong cell in the table shows up as a failure
here rather than being copied into the test.
"""

from __future__ import annotations

import pytest

from imserver.roster import RosterItem
from imserver.subscription import (
    ALL_STATES,
    BOTH,
    FROM,
    FROM_PENDING_OUT,
    NONE,
    NONE_PENDING_IN,
    NONE_PENDING_OUT,
    NONE_PENDING_OUT_IN,
    TABLE,
    TO,
    TO_PENDING_IN,
    Outcome,
    State,
    apply,
    item_state,
    transition,
)

# Short names so each expected row fits on one line.
N, N_PO, N_PI, N_POI = NONE, NONE_PENDING_OUT, NONE_PENDING_IN, NONE_PENDING_OUT_IN
TO_PI, FR, FR_PO = TO_PENDING_IN, FROM, FROM_PENDING_OUT
OUT, IN = "outbound", "inbound"
Y, F = True, False
SUBD = "subscribed"

# fmt: off
# (state, direction, kind, new state, approved after, deliver, push, auto_reply, send_presence)
# All with approved=False on the way in.
CELLS = [
    # outbound subscribe: RFC 6121 A.2.1; §3.1.2 routes it whatever the state
    (N,     OUT, "subscribe", N_PO,  F, Y, Y, None, F),  # A.2.1: item gets ask
    (N_PO,  OUT, "subscribe", N_PO,  F, Y, F, None, F),  # A.2.1: resent, no change
    (N_PI,  OUT, "subscribe", N_POI, F, Y, Y, None, F),  # A.2.1
    (N_POI, OUT, "subscribe", N_POI, F, Y, F, None, F),  # A.2.1
    (TO,    OUT, "subscribe", TO,    F, Y, F, None, F),  # A.2.1 / §3.1.2: routed anyway
    (TO_PI, OUT, "subscribe", TO_PI, F, Y, F, None, F),  # A.2.1 / §3.1.2: routed anyway
    (FR,    OUT, "subscribe", FR_PO, F, Y, Y, None, F),  # A.2.1
    (FR_PO, OUT, "subscribe", FR_PO, F, Y, F, None, F),  # A.2.1
    (BOTH,  OUT, "subscribe", BOTH,  F, Y, F, None, F),  # A.2.1 / §3.1.2: routed anyway
    # outbound unsubscribe: RFC 6121 A.2.2; §3.3.2
    (N,     OUT, "unsubscribe", N,     F, Y, F, None, F),  # A.2.2
    (N_PO,  OUT, "unsubscribe", N,     F, Y, Y, None, F),  # A.2.2: request withdrawn
    (N_PI,  OUT, "unsubscribe", N_PI,  F, Y, F, None, F),  # A.2.2
    (N_POI, OUT, "unsubscribe", N_PI,  F, Y, Y, None, F),  # A.2.2
    (TO,    OUT, "unsubscribe", N,     F, Y, Y, None, F),  # A.2.2 / §3.3.2: push 'none'
    (TO_PI, OUT, "unsubscribe", N_PI,  F, Y, Y, None, F),  # A.2.2
    (FR,    OUT, "unsubscribe", FR,    F, Y, F, None, F),  # A.2.2
    (FR_PO, OUT, "unsubscribe", FR,    F, Y, Y, None, F),  # A.2.2
    (BOTH,  OUT, "unsubscribe", FR,    F, Y, Y, None, F),  # A.2.2 / §3.3.2: push 'from'
    # outbound subscribed: RFC 6121 A.2.3; §3.1.5 approval, §3.4.2 pre-approval
    (N,     OUT, "subscribed", N,     Y, F, Y, None, F),  # §3.4.2 case 3/4: pre-approval
    (N_PO,  OUT, "subscribed", N_PO,  Y, F, Y, None, F),  # §3.4.2 case 3: pre-approval
    (N_PI,  OUT, "subscribed", FR,    F, Y, Y, None, Y),  # A.2.3 / §3.1.5: approval
    (N_POI, OUT, "subscribed", FR_PO, F, Y, Y, None, Y),  # A.2.3 / §3.1.5: approval
    (TO,    OUT, "subscribed", TO,    Y, F, Y, None, F),  # §3.4.2 case 3: pre-approval
    (TO_PI, OUT, "subscribed", BOTH,  F, Y, Y, None, Y),  # A.2.3 / §3.1.5: approval
    (FR,    OUT, "subscribed", FR,    F, F, F, None, F),  # §3.4.2 case 1: ignored
    (FR_PO, OUT, "subscribed", FR_PO, F, F, F, None, F),  # §3.4.2 case 1: ignored
    (BOTH,  OUT, "subscribed", BOTH,  F, F, F, None, F),  # §3.4.2 case 1: ignored
    # outbound unsubscribed: RFC 6121 A.2.4; §3.2.2
    (N,     OUT, "unsubscribed", N,     F, F, F, None, F),  # §3.2.2: SHOULD NOT route
    (N_PO,  OUT, "unsubscribed", N_PO,  F, F, F, None, F),  # §3.2.2: SHOULD NOT route
    (N_PI,  OUT, "unsubscribed", N,     F, Y, F, None, F),  # A.2.4: request denied
    (N_POI, OUT, "unsubscribed", N_PO,  F, Y, F, None, F),  # A.2.4: request denied
    (TO,    OUT, "unsubscribed", TO,    F, F, F, None, F),  # §3.2.2: SHOULD NOT route
    (TO_PI, OUT, "unsubscribed", TO,    F, Y, F, None, F),  # A.2.4: request denied
    (FR,    OUT, "unsubscribed", N,     F, Y, Y, None, Y),  # A.2.4 / §3.2.2: unavailable
    (FR_PO, OUT, "unsubscribed", N_PO,  F, Y, Y, None, Y),  # A.2.4 / §3.2.2: unavailable
    (BOTH,  OUT, "unsubscribed", TO,    F, Y, Y, None, Y),  # A.2.4 / §3.2.2: unavailable
    # inbound subscribe: RFC 6121 A.3.1; §3.1.3
    (N,     IN, "subscribe", N_PI,  F, Y, F, None, F),  # A.3.1 / A.1: no roster item
    (N_PO,  IN, "subscribe", N_POI, F, Y, F, None, F),  # A.3.1
    (N_PI,  IN, "subscribe", N_PI,  F, F, F, None, F),  # A.3.1: no second notification
    (N_POI, IN, "subscribe", N_POI, F, F, F, None, F),  # A.3.1: no second notification
    (TO,    IN, "subscribe", TO_PI, F, Y, F, None, F),  # A.3.1
    (TO_PI, IN, "subscribe", TO_PI, F, F, F, None, F),  # A.3.1: no second notification
    (FR,    IN, "subscribe", FR,    F, F, F, SUBD, F),  # A.3.1 / §3.1.3: MUST auto-reply
    (FR_PO, IN, "subscribe", FR_PO, F, F, F, SUBD, F),  # A.3.1 / §3.1.3: MUST auto-reply
    (BOTH,  IN, "subscribe", BOTH,  F, F, F, SUBD, F),  # A.3.1 / §3.1.3: MUST auto-reply
    # inbound unsubscribe: RFC 6121 A.3.2; §3.3.3
    (N,     IN, "unsubscribe", N,     F, F, F, None, F),  # A.3.2
    (N_PO,  IN, "unsubscribe", N_PO,  F, F, F, None, F),  # A.3.2
    (N_PI,  IN, "unsubscribe", N,     F, Y, F, None, F),  # A.3.2: request withdrawn
    (N_POI, IN, "unsubscribe", N_PO,  F, Y, F, None, F),  # A.3.2: request withdrawn
    (TO,    IN, "unsubscribe", TO,    F, F, F, None, F),  # A.3.2
    (TO_PI, IN, "unsubscribe", TO,    F, Y, F, None, F),  # A.3.2: request withdrawn
    (FR,    IN, "unsubscribe", N,     F, Y, Y, None, Y),  # A.3.2 / §3.3.3 step 3
    (FR_PO, IN, "unsubscribe", N_PO,  F, Y, Y, None, Y),  # A.3.2 / §3.3.3 step 3
    (BOTH,  IN, "unsubscribe", TO,    F, Y, Y, None, Y),  # A.3.2 / §3.3.3 step 3
    # inbound subscribed: RFC 6121 A.3.3; §3.1.6 acts only on Pending Out
    (N,     IN, "subscribed", N,     F, F, F, None, F),  # A.3.3: dropped
    (N_PO,  IN, "subscribed", TO,    F, Y, Y, None, F),  # A.3.3 / §3.1.6
    (N_PI,  IN, "subscribed", N_PI,  F, F, F, None, F),  # A.3.3: dropped
    (N_POI, IN, "subscribed", TO_PI, F, Y, Y, None, F),  # A.3.3 / §3.1.6
    (TO,    IN, "subscribed", TO,    F, F, F, None, F),  # A.3.3: dropped
    (TO_PI, IN, "subscribed", TO_PI, F, F, F, None, F),  # A.3.3: dropped
    (FR,    IN, "subscribed", FR,    F, F, F, None, F),  # A.3.3: dropped
    (FR_PO, IN, "subscribed", BOTH,  F, Y, Y, None, F),  # A.3.3 / §3.1.6
    (BOTH,  IN, "subscribed", BOTH,  F, F, F, None, F),  # A.3.3: dropped
    # inbound unsubscribed: RFC 6121 A.3.4; §3.2.3
    (N,     IN, "unsubscribed", N,     F, F, F, None, F),  # A.3.4: dropped
    (N_PO,  IN, "unsubscribed", N,     F, Y, Y, None, F),  # A.3.4: request denied
    (N_PI,  IN, "unsubscribed", N_PI,  F, F, F, None, F),  # A.3.4: dropped
    (N_POI, IN, "unsubscribed", N_PI,  F, Y, Y, None, F),  # A.3.4: request denied
    (TO,    IN, "unsubscribed", N,     F, Y, Y, None, F),  # A.3.4 / §3.2.3
    (TO_PI, IN, "unsubscribed", N_PI,  F, Y, Y, None, F),  # A.3.4 / §3.2.3
    (FR,    IN, "unsubscribed", FR,    F, F, F, None, F),  # A.3.4: dropped
    (FR_PO, IN, "unsubscribed", FR,    F, Y, Y, None, F),  # A.3.4: request denied
    (BOTH,  IN, "unsubscribed", FR,    F, Y, Y, None, F),  # A.3.4 / §3.2.3
]

# The same columns, with approved=True on the way in (RFC 6121 §3.4).
PRE_APPROVED_CELLS = [
    # §3.4: a pre-approved request is answered by the server, not delivered
    (N,     IN, "subscribe", FR,    F, F, Y, SUBD, Y),  # §3.4 / §3.1.5: auto-approved
    (N_PO,  IN, "subscribe", FR_PO, F, F, Y, SUBD, Y),  # §3.4 / §3.1.5: auto-approved
    (TO,    IN, "subscribe", BOTH,  F, F, Y, SUBD, Y),  # §3.4 / §3.1.5: auto-approved
    (FR,    IN, "subscribe", FR,    Y, F, F, SUBD, F),  # §3.1.3: already 'from'
    # §3.2.2: "unsubscribed" cancels the pre-approval and is not routed
    (N,     OUT, "unsubscribed", N,    F, F, Y, None, F),  # §3.2.2 with §3.4
    (N_PO,  OUT, "unsubscribed", N_PO, F, F, Y, None, F),  # §3.2.2 with §3.4
    (TO,    OUT, "unsubscribed", TO,   F, F, Y, None, F),  # §3.2.2 with §3.4
    # §3.4.2 case 3: pre-approving twice changes nothing, so nothing to push
    (N,     OUT, "subscribed", N,  Y, F, F, None, F),  # §3.4.2 case 3
    (TO,    OUT, "subscribed", TO, Y, F, F, None, F),  # §3.4.2 case 3
    # the user's own subscription to the contact leaves a pre-approval alone
    (N,     OUT, "subscribe",    N_PO, Y, Y, Y, None, F),  # A.2.1
    (TO,    OUT, "unsubscribe",  N,    Y, Y, Y, None, F),  # A.2.2
    (N_PO,  IN,  "subscribed",   TO,   Y, Y, Y, None, F),  # A.3.3
    (TO,    IN,  "unsubscribed", N,    Y, Y, Y, None, F),  # A.3.4
    (N,     IN,  "unsubscribe",  N,    Y, F, F, None, F),  # A.3.2
]
# fmt: on


def _ids(cells):
    return [
        f"{s.subscription}{'+out' * s.pending_out}{'+in' * s.pending_in}-{d}-{k}"
        for s, d, k, *_ in cells
    ]


def _expected(new, approved, deliver, push, reply, presence):
    return Outcome(
        state=new,
        approved=approved,
        deliver=deliver,
        push=push,
        auto_reply=reply,
        send_presence=presence,
    )


@pytest.mark.parametrize("cell", CELLS, ids=_ids(CELLS))
def test_cell(cell):
    state, direction, kind, *expected = cell
    assert transition(state, direction, kind) == _expected(*expected)


@pytest.mark.parametrize("cell", PRE_APPROVED_CELLS, ids=_ids(PRE_APPROVED_CELLS))
def test_pre_approved_cell(cell):
    state, direction, kind, *expected = cell
    assert transition(state, direction, kind, approved=True) == _expected(*expected)


def test_expectations_cover_every_cell_once():
    keys = [(s, d, k) for s, d, k, *_ in CELLS]
    assert len(keys) == len(set(keys)) == 72
    assert set(keys) == set(TABLE)


def test_nine_states():
    assert len(set(ALL_STATES)) == 9
    assert ALL_STATES[0] == State("none")


@pytest.mark.parametrize(
    "args",
    [
        ("to", True, False),  # already subscribed: nothing to ask for
        ("from", False, True),  # contact already subscribed: nothing pending
        ("both", True, False),
        ("both", False, True),
        ("to", True, True),
        ("from", True, True),
        ("remove", False, False),
    ],
)
def test_invalid_states_rejected(args):
    with pytest.raises(ValueError):
        State(*args)


@pytest.mark.parametrize("direction, kind", [("sideways", "subscribe"), ("inbound", "probe")])
def test_unknown_event_rejected(direction, kind):
    with pytest.raises(ValueError):
        transition(NONE, direction, kind)


# item_state: the roster item plus Roster.pending_in -> one of the nine states


@pytest.mark.parametrize(
    "item, pending_in, expected",
    [
        (None, False, NONE),  # A.1: not on the roster at all is "None"
        (None, True, NONE_PENDING_IN),  # A.1: request noted, no item created
        (RosterItem("c@x"), False, NONE),
        (RosterItem("c@x", ask=True), False, NONE_PENDING_OUT),
        (RosterItem("c@x", ask=True), True, NONE_PENDING_OUT_IN),
        (RosterItem("c@x", subscription="to"), True, TO_PENDING_IN),
        (RosterItem("c@x", subscription="from", ask=True), False, FROM_PENDING_OUT),
        (RosterItem("c@x", subscription="both"), False, BOTH),
        # stale flags no state can carry are dropped
        (RosterItem("c@x", subscription="to", ask=True), False, TO),
        (RosterItem("c@x", subscription="both", ask=True), True, BOTH),
        (RosterItem("c@x", subscription="from"), True, FROM),
    ],
)
def test_item_state(item, pending_in, expected):
    assert item_state(item, pending_in) == expected


# apply: the item to store, created or left absent as the RFC says


def _step(item, pending_in, direction, kind):
    state = item_state(item, pending_in)
    approved = item is not None and item.approved
    outcome = transition(state, direction, kind, approved)
    return apply(item, "c@x", outcome), outcome


def test_outbound_subscribe_creates_item_with_ask():
    # §3.1.2: the contact is added with subscription 'none' and ask
    item, outcome = _step(None, False, OUT, "subscribe")
    assert item == RosterItem("c@x", subscription="none", ask=True)
    assert outcome.push


def test_inbound_subscribe_creates_no_item():
    # A.1 "None + Pending In": MUST NOT create a roster item until approved
    item, outcome = _step(None, False, IN, "subscribe")
    assert item is None
    assert outcome.state.pending_in and outcome.deliver and not outcome.push


def test_approving_unlisted_contact_creates_item():
    # §3.1.5: the approval pushes an item with subscription 'from'
    item, outcome = _step(None, True, OUT, "subscribed")
    assert item == RosterItem("c@x", subscription="from")
    assert not outcome.state.pending_in and outcome.push


def test_denying_unlisted_contact_leaves_roster_alone():
    # A.2.4: denial routed, request forgotten, still no item
    item, outcome = _step(None, True, OUT, "unsubscribed")
    assert item is None
    assert outcome.deliver and not outcome.state.pending_in and not outcome.push


def test_pre_approval_creates_item():
    # §3.4.2 case 4: item with subscription 'none' and approved
    item, outcome = _step(None, False, OUT, "subscribed")
    assert item == RosterItem("c@x", approved=True)
    assert outcome.push and not outcome.deliver


@pytest.mark.parametrize("kind", ["subscribed", "unsubscribed", "unsubscribe"])
def test_inbound_stanzas_without_item_create_none(kind):
    item, outcome = _step(None, False, IN, kind)
    assert item is None
    assert not outcome.deliver


def test_name_and_groups_preserved():
    old = RosterItem("c@x", name="Juliet", ask=True, groups=("Friends", "Capulets"))
    item, _ = _step(old, False, IN, "subscribed")  # A.3.3: None + Pending Out -> To
    assert item == RosterItem(
        "c@x", name="Juliet", subscription="to", groups=("Friends", "Capulets")
    )


def test_unsubscribe_keeps_item():
    # §3.3.2: the item stays, pushed with subscription 'none'
    old = RosterItem("c@x", name="Juliet", subscription="to")
    item, outcome = _step(old, False, OUT, "unsubscribe")
    assert item == RosterItem("c@x", name="Juliet", subscription="none")
    assert outcome.push


def test_cancelled_subscription_keeps_item():
    old = RosterItem("c@x", subscription="both", groups=("Friends",))
    item, outcome = _step(old, False, OUT, "unsubscribed")  # §3.2.2: Both -> To
    assert item == RosterItem("c@x", subscription="to", groups=("Friends",))
    assert outcome.send_presence


def test_pre_approval_consumed():
    # §3.4: the request is answered for the user and the flag has done its job
    old = RosterItem("c@x", name="Romeo", approved=True)
    item, outcome = _step(old, False, IN, "subscribe")
    assert item == RosterItem("c@x", name="Romeo", subscription="from")
    assert outcome.auto_reply == "subscribed" and not outcome.deliver


def test_pre_approval_cancelled():
    # §3.2.2: unsubscribed removes the pre-approval, item stays
    old = RosterItem("c@x", subscription="to", approved=True)
    item, outcome = _step(old, False, OUT, "unsubscribed")
    assert item == RosterItem("c@x", subscription="to")
    assert outcome.push and not outcome.deliver


def test_unchanged_item_is_equal():
    old = RosterItem("c@x", name="Juliet", subscription="both", groups=("Friends",))
    item, outcome = _step(old, False, IN, "subscribe")  # §3.1.3: auto-reply only
    assert item == old
    assert not outcome.push


# Both sides together: each routed stanza is the other side's inbound event.


def _exchange(sender, receiver, kind):
    """Run C{kind} from C{sender} to C{receiver}; each side is [state, approved]."""
    out = transition(sender[0], OUT, kind, sender[1])
    sender[:] = [out.state, out.approved]
    if not out.deliver:
        return None
    inc = transition(receiver[0], IN, kind, receiver[1])
    receiver[:] = [inc.state, inc.approved]
    return inc


def test_mutual_subscription_handshake():
    user, contact = [NONE, False], [NONE, False]
    _exchange(user, contact, "subscribe")
    assert (user[0], contact[0]) == (NONE_PENDING_OUT, NONE_PENDING_IN)
    _exchange(contact, user, "subscribed")
    assert (user[0], contact[0]) == (TO, FROM)
    _exchange(contact, user, "subscribe")
    assert (user[0], contact[0]) == (TO_PENDING_IN, FROM_PENDING_OUT)
    _exchange(user, contact, "subscribed")
    assert (user[0], contact[0]) == (BOTH, BOTH)
    _exchange(user, contact, "unsubscribe")
    assert (user[0], contact[0]) == (FROM, TO)


def test_pre_approved_handshake():
    user, contact = [NONE, False], [NONE, False]
    assert _exchange(user, contact, "subscribed") is None  # §3.4: recorded, not routed
    assert user == [NONE, True]
    inc = _exchange(contact, user, "subscribe")
    assert inc.auto_reply == "subscribed" and not inc.deliver
    assert user == [FROM, False]
    # the auto-reply travels back as the contact's inbound "subscribed"
    reply = transition(contact[0], IN, inc.auto_reply, contact[1])
    assert reply.state == TO and reply.deliver
