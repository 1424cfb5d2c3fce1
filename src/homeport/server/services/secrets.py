"""Secret values: encrypted at rest with the server's key, decrypted only to start a
container. A database dump alone reveals variable names, never values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

from homeport.server import errors
from homeport.server.store import schema

s = schema.secret_values
KEY_ENVIRONMENT_VARIABLE = "HOMEPORT_SECRET_KEY"  # for clusters: every node gets the same key


def load_key(key_file: Path) -> bytes:
    """The key comes from HOMEPORT_SECRET_KEY, else from a 0600 file in the data dir
    (kept out of the database on purpose), created on first use."""
    from_environment = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if from_environment:
        return from_environment.encode()
    if not key_file.exists():
        key = Fernet.generate_key()
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
    return key_file.read_bytes().strip()


def remove_contents(connection: sa.Connection, secret_id: str) -> None:
    connection.execute(s.delete().where(s.c.secret_id == secret_id))


class SecretService:
    def __init__(self, engine: sa.Engine, key: bytes) -> None:
        self.engine = engine
        self._fernet = Fernet(key)

    def set(self, secret_id: str, values: dict[str, str], replace: bool = True) -> None:
        for name in values:
            if not name or "=" in name or "\0" in name:
                raise errors.invalid_argument(f"invalid environment variable name {name!r} in secret")
        with self.engine.begin() as connection:
            if not replace:
                current = self._read(connection, secret_id)
                values = {**current, **values}
            ciphertext = self._fernet.encrypt(json.dumps(values).encode())
            connection.execute(s.delete().where(s.c.secret_id == secret_id))
            connection.execute(
                s.insert().values(secret_id=secret_id, ciphertext=ciphertext, keys=json.dumps(sorted(values)))
            )

    def _read(self, connection: sa.Connection, secret_id: str) -> dict[str, str]:
        row = connection.execute(sa.select(s.c.ciphertext).where(s.c.secret_id == secret_id)).first()
        if row is None:
            return {}
        return dict(json.loads(self._fernet.decrypt(row.ciphertext)))

    def values(self, workspace_id: str, secret_id: str) -> dict[str, str]:
        """A secret's values, for a container or build of its own workspace only."""
        o = schema.storage_objects
        with self.engine.connect() as connection:
            owner = connection.execute(
                sa.select(o.c.workspace_id).where(o.c.id == secret_id, o.c.kind == "secret")
            ).scalar()
            if owner != workspace_id:
                raise errors.not_found(f"secret {secret_id} not found in this workspace")
            return self._read(connection, secret_id)

    def keys(self, secret_id: str) -> list[str]:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(s.c["keys"]).where(s.c.secret_id == secret_id)).first()
        return list(json.loads(row[0])) if row else []
