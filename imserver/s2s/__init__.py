"""Server-to-server federation (RFC 6120 §4-§9, §13; XEP-0178, XEP-0220, XEP-0288, XEP-0368).

- L{resolver}: where a remote domain listens (static map, DNS SRV, A records).
- L{tls}: TLS contexts for both directions, and certificate verification.
- L{dialback}: XEP-0220 keys (XEP-0185) compared in constant time.
- L{stream}: the s2s XML stream, incoming and outgoing, with STARTTLS, SASL
  EXTERNAL, dialback and bidi.
- L{manager}: the route to every remote domain: connections on demand, reuse,
  a bounded queue while connecting, bounces, idle close, caps.
"""
