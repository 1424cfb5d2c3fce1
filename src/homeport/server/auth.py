"""Workspaces, user tokens and per-container credentials.

Secrets are random (192 bits), so a single SHA-256 is a sound way to store them:
nothing in the database lets anyone call the API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time

import sqlalchemy as sa

from homeport import ids
from homeport.server import errors
from homeport.server.context import TaskIdentity
from homeport.server.store import schema

DEFAULT_WORKSPACE = "main"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class VerifiedTask:
    workspace_id: str
    identity: TaskIdentity


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    token_id: str
    workspace_name: str
    label: str
    created_at: float
    revoked: bool
    scope: str


# Verified credentials are remembered this long, so a revocation takes effect within it.
CACHE_TTL_S = 2.0


class AuthService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}
        self._tasks: dict[tuple[str, str], tuple[float, VerifiedTask]] = {}

    # --- workspaces ------------------------------------------------------------------

    def create_workspace(self, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"invalid workspace name {name!r}: use letters, digits, '-' and '_'")
        workspace_id = ids.new_id("workspace")
        with self.engine.begin() as connection:
            exists = connection.execute(
                sa.select(schema.workspaces.c.id).where(schema.workspaces.c.name == name)
            ).first()
            if exists:
                raise ValueError(f"workspace {name!r} already exists")
            connection.execute(
                schema.workspaces.insert().values(id=workspace_id, name=name, created_at=time.time())
            )
        return workspace_id

    def list_workspaces(self) -> list[tuple[str, str]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(schema.workspaces.c.id, schema.workspaces.c.name).order_by(
                    schema.workspaces.c.created_at
                )
            )
            return [(row.id, row.name) for row in rows]

    def workspace_id(self, name: str) -> str:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(schema.workspaces.c.id).where(schema.workspaces.c.name == name)
            ).first()
        if row is None:
            raise ValueError(
                f"no workspace named {name!r}; create it with `homeport workspace create {name}`"
            )
        return str(row.id)

    def workspace_name(self, workspace_id: str) -> str:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(schema.workspaces.c.name).where(schema.workspaces.c.id == workspace_id)
            ).first()
        return str(row.name) if row else workspace_id

    def ensure_default_workspace(self) -> str:
        try:
            return self.workspace_id(DEFAULT_WORKSPACE)
        except ValueError:
            return self.create_workspace(DEFAULT_WORKSPACE)

    # --- user tokens -----------------------------------------------------------------

    def create_token(self, workspace_name: str, label: str = "", scope: str = "api") -> tuple[str, str]:
        """A token for the API (scope "api") or only for proxy-auth web endpoints ("proxy")."""
        if scope not in ("api", "proxy"):
            raise ValueError(f"unknown token scope {scope!r}; use 'api' or 'proxy'")
        workspace_id = self.workspace_id(workspace_name)
        token_id, secret = ids.new_id("token"), ids.new_id("token_secret")
        with self.engine.begin() as connection:
            connection.execute(
                schema.tokens.insert().values(
                    id=token_id,
                    workspace_id=workspace_id,
                    secret_hash=hash_secret(secret),
                    label=label,
                    created_at=time.time(),
                    scope=scope,
                )
            )
        return token_id, secret

    def list_tokens(self) -> list[TokenInfo]:
        t, w = schema.tokens, schema.workspaces
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(t.c.id, w.c.name, t.c.label, t.c.created_at, t.c.revoked_at, t.c.scope)
                .join(w, w.c.id == t.c.workspace_id)
                .order_by(t.c.created_at)
            )
            return [
                TokenInfo(row.id, row.name, row.label, row.created_at, row.revoked_at is not None, row.scope)
                for row in rows
            ]

    def revoke_token(self, token_id: str) -> None:
        with self.engine.begin() as connection:
            result = connection.execute(
                schema.tokens.update()
                .where(schema.tokens.c.id == token_id, schema.tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        if result.rowcount == 0:
            raise ValueError(f"no active token {token_id!r}; see `homeport token list`")

    def verify_token(self, token_id: str, secret: str) -> str:
        """Returns the token's workspace id, or raises UNAUTHENTICATED."""
        cached = self._tokens.get((token_id, secret))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if not token_id or not secret:
            raise errors.unauthenticated(
                "missing credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (see DIR/client.env), "
                "or run `homeport up` to write a modal profile"
            )
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(
                    schema.tokens.c.workspace_id,
                    schema.tokens.c.secret_hash,
                    schema.tokens.c.revoked_at,
                    schema.tokens.c.scope,
                ).where(schema.tokens.c.id == token_id)
            ).first()
        if (
            row is None
            or row.revoked_at is not None
            or row.scope != "api"
            or not hmac.compare_digest(row.secret_hash, hash_secret(secret))
        ):
            raise errors.unauthenticated(
                f"token {token_id} is invalid or revoked; create one with `homeport token create`"
            )
        self._tokens[(token_id, secret)] = (time.monotonic() + CACHE_TTL_S, str(row.workspace_id))
        return str(row.workspace_id)

    def verify_proxy_token(self, workspace_id: str, token_id: str, secret: str) -> bool:
        """Whether Modal-Key/Modal-Secret name a live proxy-auth token of this workspace."""
        if not token_id or not secret:
            return False
        t = schema.tokens
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.workspace_id, t.c.secret_hash, t.c.revoked_at, t.c.scope).where(
                    t.c.id == token_id
                )
            ).first()
        return (
            row is not None
            and row.revoked_at is None
            and row.scope == "proxy"
            and row.workspace_id == workspace_id
            and hmac.compare_digest(row.secret_hash, hash_secret(secret))
        )

    # --- container credentials -------------------------------------------------------

    def verify_task(self, task_id: str, secret: str) -> VerifiedTask:
        cached = self._tasks.get((task_id, secret))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        t = schema.tasks
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.workspace_id, t.c.app_id, t.c.function_id, t.c.secret_hash, t.c.state).where(
                    t.c.id == task_id
                )
            ).first()
        if row is None or not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            raise errors.unauthenticated(f"invalid container credential for task {task_id}")
        if row.state == "stopped":
            raise errors.unauthenticated(
                f"container {task_id} has stopped; its credential is no longer valid"
            )
        return self.remember_task(task_id, secret, row.workspace_id, row.app_id, row.function_id)

    def remember_task(
        self, task_id: str, secret: str, workspace_id: str, app_id: str, function_id: str
    ) -> VerifiedTask:
        """A credential verified, or one this server has just made (its task row committed:
        the container's first request finds it here, not in the database)."""
        verified = VerifiedTask(workspace_id, TaskIdentity(task_id, app_id, function_id))
        self._tasks[(task_id, secret)] = (time.monotonic() + CACHE_TTL_S, verified)
        return verified

    def forget_task(self, task_id: str) -> None:
        """A stopped container's credential stops working at once on this node."""
        for key in [key for key in self._tasks if key[0] == task_id]:
            self._tasks.pop(key, None)
