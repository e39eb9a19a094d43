"""xmpp.js (@xmpp/client 0.14 from npm), an independent client, logs in with SASL2, Bind2 and FAST.

Its first login uses SCRAM-SHA-1 over SASL2 and asks for a token; its second
authenticates with that token (HT-SHA-256-NONE), binds with Bind2 and pings.
The package is installed by .ci/run under IMSERVER_XMPPJS (default
~/.cache/imserver-xmppjs); without it (or node) the test is skipped, except
under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.server import ServerProcess
from support.tools import needs

SCRIPT = Path(__file__).parent / "support" / "xmppjs_fast.mjs"
MODULES = Path(os.environ.get("IMSERVER_XMPPJS", Path.home() / ".cache" / "imserver-xmppjs"))
INSTALLED = (MODULES / "node_modules" / "@xmpp" / "client").is_dir()

pytestmark = [
    needs("node"),
    pytest.mark.skipif(
        not INSTALLED and os.environ.get("CI") != "true",
        reason=f"@xmpp/client is not installed in {MODULES}",
    ),
]


def test_xmppjs_gets_and_uses_a_fast_token(server: ServerProcess) -> None:
    jid, password = server.new_account("js")
    result = subprocess.run(
        [
            "node",
            str(SCRIPT),
            str(MODULES),
            f"xmpp://{server.interface}:{server.port}",
            server.host,
            jid.partition("@")[0],
            password,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_TLS_REJECT_UNAUTHORIZED": "0"},  # self-signed test certificate
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    first, second = report["logins"]
    assert first["mechanisms"] == ["SCRAM-SHA-1"] and first["requested_token"], report
    assert first["has_token"], report
    # One attempt, no failure: the token worked and xmpp.js verified our HT proof.
    assert second["mechanisms"] == ["HT-SHA-256-NONE"] and not second["failures"], report
    assert second["bind2"] and second["jid"].startswith(jid + "/"), report
    assert first["ping"] == second["ping"] == "result", report
