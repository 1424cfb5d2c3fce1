"""Who is looking at the dashboard: `modal dashboard` asks the server for a short-lived
sign-in URL for the caller's workspace (WorkspaceDashboardUrlGet); opening it sets a
session cookie for that workspace. Both are HMAC-signed with a key kept in the database,
so any replica accepts them; nothing else grants access, and a session sees only its own
workspace's objects."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SIGN_IN_LIFETIME_S = 600
SESSION_LIFETIME_S = 12 * 3600
SESSION_COOKIE = "homeport_session"


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, purpose: str, workspace_id: str, expires: int) -> str:
        message = f"{purpose}:{workspace_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _make(self, purpose: str, workspace_id: str, lifetime_s: int) -> str:
        expires = int(time.time()) + lifetime_s
        raw = f"{workspace_id}:{expires}:{self._sign(purpose, workspace_id, expires)}"
        return base64.urlsafe_b64encode(raw.encode()).decode()

    def _open(self, purpose: str, token: str) -> str | None:
        try:
            workspace_id, expires, signature = base64.urlsafe_b64decode(token.encode()).decode().split(":")
            deadline = int(expires)
        except (ValueError, UnicodeDecodeError):
            return None
        if deadline < time.time() or not hmac.compare_digest(
            signature, self._sign(purpose, workspace_id, deadline)
        ):
            return None
        return workspace_id

    def sign_in_token(self, workspace_id: str) -> str:
        return self._make("sign-in", workspace_id, SIGN_IN_LIFETIME_S)

    def session_token(self, workspace_id: str) -> str:
        return self._make("session", workspace_id, SESSION_LIFETIME_S)

    def workspace_of_sign_in(self, token: str) -> str | None:
        return self._open("sign-in", token)

    def workspace_of_session(self, token: str) -> str | None:
        return self._open("session", token)
