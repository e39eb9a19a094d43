"""Privacy lists (RFC 3921 §10, XEP-0016) and the blocking command (XEP-0191): one engine.

Three layers: L{rules} (the model and pure evaluation, what storage imports),
L{engine} (the filters the dispatcher consults at stages 2 and 5, and the
in-memory cache of online users' lists) and L{changes} (list and block
changes, their effect on presence, and the C{privacy-changed} hook that the
two protocol faces, plugins/privacy.py and plugins/blocking.py, push from).

Which list applies (RFC 3921 §10 business rules 1-3): a session's active list
if it set one, else the user's default list, else none (everything allowed).
There is no layering. For a stanza to or from a bare JID, the lists of every
session concerned are consulted (the resources a message would reach, the
available ones for presence, all of them otherwise; the default list when no
session is) and the stanza is stopped if any of them denies it.

Stanza kinds: an item naming <message/>, <iq/> or <presence-in/> applies to
inbound stanzas of that kind only, <presence-out/> to outbound presence
notifications (available and unavailable: broadcasts, directed presence and
probe answers alike); an item naming no kind applies to every stanza in both
directions, subscription requests and probes included (which the named kinds
do not cover, XEP-0016 §2.1).

What a denial does: a blocked entity's message or iq get/set is answered with
service-unavailable (what an unavailable user causes: the block stays secret),
anything else from it is dropped silently; the user's own stanza to a denied
entity gets not-acceptable (with XEP-0191's <blocked/> when the deciding item
is a block), while stanzas the server emits on the user's behalf are dropped.
Stanzas between a user's own resources, and to the server, are never filtered.

Online users' settings live in memory (loaded when their first session binds,
dropped when the last one ends), so a stanza between two online users without
lists costs two dictionary lookups. For an offline user, the default list is
read from the store only for what would act on them (messages, iq get/set,
subscription stanzas); presence to an offline user has nowhere to go anyway.

Blocking and privacy lists share one store (XEP-0191 §3): the blocklist *is*
the set of items of the user's default privacy list that have type "jid",
action "deny" and apply to every stanza kind (no kind named, or all four).

- Retrieving the blocklist lists those items' JIDs (none without a default list).
- Blocking JIDs puts one such item per JID at the front of the default list
  (below the lowest order in use, renumbering the list only when there is no
  room), so a block always wins over the list's other rules; without a default
  list, the list named L{BLOCKLIST_NAME} is created (or extended) and made the
  default.
- Unblocking removes those items; a default list left empty is removed and the
  default declined. Unblocking all removes every such item.
- A privacy-list client sees the block as ordinary deny items and may edit
  them; whatever it does to the default list (or a change of default list)
  shows in the blocklist, and resources that retrieved the blocklist get
  block/unblock pushes for the difference. A session that activates another
  list escapes the blocklist for that session, as XEP-0191 §3 (item 5) says.
- Every change, from either protocol, pushes the changed list's name to every
  connected resource (§10 rule 10) and sends unavailable presence to contacts
  that can no longer see a resource (current presence to those that can again).
"""

from imserver.privacy.changes import PrivacyChange, PrivacyChanges
from imserver.privacy.engine import PrivacyEngine
from imserver.privacy.rules import (
    ACTIONS,
    ACTIVE_KEY,
    BLOCKLIST_KEY,
    BLOCKLIST_NAME,
    ITEM_TYPES,
    NS_BLOCKING,
    NS_BLOCKING_ERRORS,
    NS_PRIVACY,
    STANZA_KINDS,
    SUBSCRIPTION_VALUES,
    PrivacyItem,
    PrivacySettings,
    blocklist_of,
    effective_list,
    first_match,
    is_allowed,
    is_block_item,
    jid_matches,
    normalized,
    parse_order,
    stanza_kind,
    with_blocked,
    without_blocked,
)

__all__ = [
    "ACTIONS",
    "ACTIVE_KEY",
    "BLOCKLIST_KEY",
    "BLOCKLIST_NAME",
    "ITEM_TYPES",
    "NS_BLOCKING",
    "NS_BLOCKING_ERRORS",
    "NS_PRIVACY",
    "STANZA_KINDS",
    "SUBSCRIPTION_VALUES",
    "PrivacyChange",
    "PrivacyChanges",
    "PrivacyEngine",
    "PrivacyItem",
    "PrivacySettings",
    "blocklist_of",
    "effective_list",
    "first_match",
    "is_allowed",
    "is_block_item",
    "jid_matches",
    "normalized",
    "parse_order",
    "stanza_kind",
    "with_blocked",
    "without_blocked",
]
