"""Wire-test harness: a real imserver process (server.py) and a raw XMPP client (client.py)."""
