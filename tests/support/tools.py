"""External programs some interop tests drive (Prosody, go-sendxmpp, openssl, Chromium).

On a developer's machine a missing program skips its tests, so the README's
test command works with nothing but python3. Under CI (CI=true), where
.ci/run installs every one of them, a missing program fails instead: an
interop test must never pass CI by being skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest


def needs(program: str) -> pytest.MarkDecorator:
    """Mark a test that runs C{program}: skipped when missing, except under CI, where it fails."""
    missing = shutil.which(program) is None and os.environ.get("CI") != "true"
    return pytest.mark.skipif(missing, reason=f"{program} is not installed")
