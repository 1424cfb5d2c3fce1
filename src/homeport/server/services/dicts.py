"""Dict contents: serialized keys and values, keyed by the hash of the key's bytes."""

from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa

from homeport.server.store import schema

d = schema.dict_entries

# Built once: building a statement costs more than running it (a Dict get or put is one
# or two of them).
_VALUE = sa.select(d.c.value).where(
    d.c.dict_id == sa.bindparam("b_dict_id"), d.c.key_hash == sa.bindparam("b_key_hash")
)
_ANY_OF = (
    sa.select(d.c.key_hash)
    .where(
        d.c.dict_id == sa.bindparam("b_dict_id"), d.c.key_hash.in_(sa.bindparam("b_hashes", expanding=True))
    )
    .limit(1)
)
_DELETE_ALL_OF = d.delete().where(
    d.c.dict_id == sa.bindparam("b_dict_id"), d.c.key_hash.in_(sa.bindparam("b_hashes", expanding=True))
)
_INSERT = d.insert()


def key_hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def remove_contents(connection: sa.Connection, dict_id: str) -> None:
    connection.execute(d.delete().where(d.c.dict_id == dict_id))


class DictService:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, dict_id: str, key: bytes) -> bytes | None:
        with self.engine.connect() as connection:
            row = connection.execute(_VALUE, {"b_dict_id": dict_id, "b_key_hash": key_hash(key)}).first()
        return row.value if row else None

    def update(self, dict_id: str, entries: list[tuple[bytes, bytes]], if_not_exists: bool) -> bool:
        """Write entries. With `if_not_exists`, write nothing if any key exists; returns
        whether the write happened."""
        now = time.time()
        with self.engine.begin() as connection:
            hashes = [key_hash(key) for key, _ in entries]
            if if_not_exists:
                exists = connection.execute(_ANY_OF, {"b_dict_id": dict_id, "b_hashes": hashes}).first()
                if exists is not None:
                    return False
            latest = dict(zip(hashes, entries))  # the last value for a repeated key wins
            connection.execute(_DELETE_ALL_OF, {"b_dict_id": dict_id, "b_hashes": list(latest)})
            if latest:
                connection.execute(
                    _INSERT,
                    [
                        {"dict_id": dict_id, "key_hash": h, "key": key, "value": value, "updated_at": now}
                        for h, (key, value) in latest.items()
                    ],
                )
        return True

    def pop(self, dict_id: str, key: bytes) -> bytes | None:
        hashed = key_hash(key)
        with self.engine.begin() as connection:
            row = connection.execute(_VALUE, {"b_dict_id": dict_id, "b_key_hash": hashed}).first()
            if row is None:
                return None
            connection.execute(_DELETE_ALL_OF, {"b_dict_id": dict_id, "b_hashes": [hashed]})
            return row.value

    def length(self, dict_id: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).where(d.c.dict_id == dict_id)).scalar_one()
            )

    def clear(self, dict_id: str) -> None:
        with self.engine.begin() as connection:
            remove_contents(connection, dict_id)

    def contents(self, dict_id: str, batch: int = 500):  # type: ignore[no-untyped-def]
        """Yield (key, value) pairs, reading the table in batches."""
        after = ""
        while True:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    sa.select(d.c.key_hash, d.c.key, d.c.value)
                    .where(d.c.dict_id == dict_id, d.c.key_hash > after)
                    .order_by(d.c.key_hash)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield row.key, row.value
            after = rows[-1].key_hash
