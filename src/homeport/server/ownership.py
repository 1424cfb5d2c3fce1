"""Every object id a request names must belong to the caller's workspace.

Checked once, at the RPC edge, for every RPC: the request message is walked along the
fields that can hold object ids (any string field named `*_id` or `*_ids`, at any depth,
found from the message descriptors once per message type), and each value that has the
shape of one of our ids is looked up by its prefix. An id of another workspace, or of
nothing, answers NOT_FOUND, so a caller learns nothing about other workspaces. Handlers
may therefore trust every id they are handed.

An object's owner never changes, so answers are cached (bounded); a deleted object may
stay cached, which is harmless: its handler still finds nothing.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator
from typing import Any, cast

import sqlalchemy as sa
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from homeport import ids
from homeport.server import errors
from homeport.server.store import schema

# Mounts owned by no workspace (the client package mount) are open to everyone.
GLOBAL = ""

_ID_SHAPE = re.compile(r"^([a-z]{2})-[A-Za-z0-9]{22,26}$")
_CACHE_SIZE = 100_000


def _owner_queries() -> dict[str, tuple[str, Any]]:
    """For each id prefix: what to call it in an error, and a query for (id, workspace_id)."""
    s, a, f, c, fc, i = (
        schema.storage_objects,
        schema.apps,
        schema.functions,
        schema.classes,
        schema.function_calls,
        schema.inputs,
    )
    storage = sa.select(s.c.id, s.c.workspace_id)
    # A container is a function's (tasks) or a sandbox's.
    tasks = sa.union_all(
        sa.select(schema.tasks.c.id.label("id"), schema.tasks.c.workspace_id.label("workspace_id")),
        sa.select(schema.sandboxes.c.task_id, schema.sandboxes.c.workspace_id),
    ).subquery()
    return {
        ids.PREFIXES["app"]: ("app", sa.select(a.c.id, a.c.workspace_id)),
        ids.PREFIXES["function"]: (
            "function",
            sa.select(f.c.id, a.c.workspace_id).join(a, a.c.id == f.c.app_id),
        ),
        ids.PREFIXES["class"]: ("class", sa.select(c.c.id, a.c.workspace_id).join(a, a.c.id == c.c.app_id)),
        ids.PREFIXES["function_call"]: ("function call", sa.select(fc.c.id, fc.c.workspace_id)),
        ids.PREFIXES["input"]: (
            "input",
            sa.select(i.c.id, fc.c.workspace_id).join(fc, fc.c.id == i.c.function_call_id),
        ),
        ids.PREFIXES["task"]: ("container", sa.select(tasks.c.id, tasks.c.workspace_id)),
        ids.PREFIXES["image"]: ("image", sa.select(schema.images.c.id, schema.images.c.workspace_id)),
        ids.PREFIXES["mount"]: ("mount", sa.select(schema.mounts.c.id, schema.mounts.c.workspace_id)),
        ids.PREFIXES["blob"]: ("blob", sa.select(schema.blobs.c.id, schema.blobs.c.workspace_id)),
        ids.PREFIXES["environment"]: (
            "environment",
            sa.select(schema.environments.c.id, schema.environments.c.workspace_id),
        ),
        ids.PREFIXES["secret"]: ("secret", storage),
        ids.PREFIXES["dict"]: ("dict", storage),
        ids.PREFIXES["queue"]: ("queue", storage),
        ids.PREFIXES["volume"]: ("volume", storage),
        ids.PREFIXES["sandbox"]: (
            "sandbox",
            sa.select(schema.sandboxes.c.id, schema.sandboxes.c.workspace_id),
        ),
    }


def _is_id_field(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_STRING and field.name.endswith(("_id", "_ids"))


# For one message type: {field name: (shape, None)} for a field holding ids, or
# {field name: (shape, the same kind of tree)} for message fields with ids below them.
# shape: "one" (a singular field), "many" (repeated) or "map" (the map's values).
IdFieldTree = dict[str, tuple[str, "IdFieldTree | None"]]


def id_field_tree(descriptor: Descriptor, _visiting: frozenset[str] = frozenset()) -> IdFieldTree:
    """The fields of a message type, at any depth, that can hold object ids. Map keys are
    names; map values are ids when the map is named `*_ids` (AppPublish.function_ids:
    tag -> function id), and are walked when they are messages."""
    tree: IdFieldTree = {}
    for field in descriptor.fields:
        shape = "many" if field.is_repeated else "one"
        if _is_id_field(field):
            tree[field.name] = (shape, None)
            continue
        child = field.message_type
        if child is None:
            continue
        if child.GetOptions().map_entry:
            value = child.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_STRING and field.name.endswith("_ids"):
                tree[field.name] = ("map", None)
            elif value.message_type is not None and value.message_type.full_name not in _visiting:
                below = id_field_tree(value.message_type, _visiting | {descriptor.full_name})
                if below:
                    tree[field.name] = ("map", below)
        elif child.full_name not in _visiting:
            below = id_field_tree(child, _visiting | {descriptor.full_name})
            if below:
                tree[field.name] = (shape, below)
    return tree


def named_ids(message: Message, tree: IdFieldTree) -> Iterator[str]:
    """Every non-empty value of the tree's id fields in this message."""
    for name, (shape, below) in tree.items():
        if shape == "one":
            if below is None:
                if value := getattr(message, name):
                    yield value
            elif message.HasField(name):
                yield from named_ids(getattr(message, name), below)
            continue
        values = getattr(message, name).values() if shape == "map" else getattr(message, name)
        for value in values:
            if below is None:
                if value:
                    yield value
            else:
                yield from named_ids(value, below)


class OwnershipCheck:
    """Refuses requests naming objects outside the caller's workspace."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._queries = _owner_queries()
        self._trees: dict[str, IdFieldTree] = {}
        self._owners: collections.OrderedDict[str, str] = collections.OrderedDict()

    def check(self, workspace_id: str, request: Message) -> None:
        """Raises NOT_FOUND naming the first id the workspace does not own."""
        name = request.DESCRIPTOR.full_name
        tree = self._trees.get(name)
        if tree is None:
            tree = self._trees[name] = id_field_tree(cast(Descriptor, request.DESCRIPTOR))
        if not tree:
            return
        wanted: dict[str, list[str]] = {}
        for object_id in named_ids(request, tree):
            match = _ID_SHAPE.match(object_id)
            if match is None or match.group(1) not in self._queries:
                continue  # not one of ours (log cursors, client-made ids)
            owner = self._owners.get(object_id)
            if owner is None:
                wanted.setdefault(match.group(1), []).append(object_id)
            elif not self._may_use(workspace_id, match.group(1), owner):
                self._refuse(match.group(1), object_id)
        for prefix, object_ids in wanted.items():
            self._look_up(prefix, object_ids)
            for object_id in object_ids:
                owner = self._owners.get(object_id)
                if owner is None or not self._may_use(workspace_id, prefix, owner):
                    self._refuse(prefix, object_id)

    def remember(self, object_id: str, workspace_id: str) -> None:
        """An object just made for a workspace: no lookup needed when it is next named."""
        self._owners[object_id] = workspace_id
        if len(self._owners) > _CACHE_SIZE:
            self._owners.popitem(last=False)

    def owner(self, object_id: str) -> str | None:
        """The workspace owning an id (GLOBAL for shared mounts), None if nothing has it."""
        match = _ID_SHAPE.match(object_id)
        if match is None or match.group(1) not in self._queries:
            return None
        if object_id not in self._owners:
            self._look_up(match.group(1), [object_id])
        return self._owners.get(object_id)

    def _may_use(self, workspace_id: str, prefix: str, owner: str) -> bool:
        if owner == GLOBAL:
            return prefix == ids.PREFIXES["mount"]
        return owner == workspace_id

    def _look_up(self, prefix: str, object_ids: list[str]) -> None:
        query = self._queries[prefix][1]
        id_column = query.selected_columns[0]
        with self.engine.connect() as connection:
            rows = connection.execute(query.where(id_column.in_(set(object_ids)))).all()
        for row in rows:
            self._owners[row[0]] = row[1] or GLOBAL
        while len(self._owners) > _CACHE_SIZE:
            self._owners.popitem(last=False)

    def _refuse(self, prefix: str, object_id: str) -> None:
        kind = self._queries[prefix][0]
        raise errors.not_found(f"{kind} {object_id} not found in this workspace")
