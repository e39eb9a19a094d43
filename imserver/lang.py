"""xml:lang on client streams (RFC 6120 §4.7.4, §8.1.5): which language is whose.

Two languages matter on a stream:

- the client's preferred language, from its stream header. Stanzas it sends
  without an xml:lang get that value when routed on (§4.7.4: even a language
  the server has no text in), so their recipients know what language they are in;
- the language the server answers in, named in the response stream header and
  inherited by everything the server writes on that stream. It is the client's
  language when the server has text in it (RFC 4647 §3.4 lookup, so "en-GB"
  finds "en"), else the server's default.

Every text the server writes (stream and stanza error <text/>, SASL failure
<text/>) is English today, so the answer is always "en": echoing a language we
have no text in would mislabel our English. Adding a translation means adding
its tag to L{LANGUAGES} and choosing the text by the stream's language.
"""

from __future__ import annotations

import re

from twisted.words.protocols.jabber.error import BaseError

NS_XML = "http://www.w3.org/XML/1998/namespace"
#: The key of xml:lang in a domish element's attributes.
XML_LANG = (NS_XML, "lang")

#: The languages the server has text in; the first is its default.
LANGUAGES = ("en",)
DEFAULT = LANGUAGES[0]

# A well-formed language tag, simplified from RFC 5646: subtags of one to eight
# letters or digits, the first letters only. Enough to refuse what is not a tag
# at all; whether a subtag is registered does not matter to us.
_TAG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")


def preferred(value: str | None) -> str | None:
    """The client's language from its header's xml:lang; None when absent, empty or malformed.

    A malformed value is ignored rather than refused: the stream works without it.
    """
    if value and _TAG.fullmatch(value):
        return value
    return None


def lookup(wanted: str | None, available: tuple[str, ...] = LANGUAGES) -> str:
    """The language to answer in: RFC 4647 §3.4 lookup of C{wanted}, else the default.

    The tag is shortened subtag by subtag from the end (dropping a single-letter
    subtag such as "x" left at the end) until it names an available language.
    """
    if wanted is None:
        return DEFAULT
    by_lower = {language.lower(): language for language in available}
    tag = wanted.lower()
    while tag:
        if tag in by_lower:
            return by_lower[tag]
        tag = tag.rpartition("-")[0]
        if len(tag) >= 2 and tag[-2] == "-":
            tag = tag[:-2]
    return DEFAULT


def labelled(error: BaseError) -> BaseError:
    """C{error} with its <text/> marked as the server's language (RFC 6120 §4.9.2, §8.3.2).

    Error stanzas travel to streams of any language, and Twisted leaves the
    text unlabelled unless told.
    """
    if error.text and error.textLang is None:
        error.textLang = DEFAULT
    return error
