"""Another workspace's ids open nothing: every RPC, every field that can name an object.

The cases come from the server's own handler table and the request messages'
descriptors, so a new RPC (or a new id field) is covered as soon as it exists, and this
suite fails until `FIELD_KINDS` says what kind of object the new field names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from modal_proto import api_grpc

from homeport.server.ownership import IdFieldTree, id_field_tree
from homeport.server.rpc import load_all
from tests.conftest import Server, assert_ok, output, run_modal, run_python
from tests.e2e.test_auth import call_raw, user_metadata

# What each id field names, by field name. None: the field holds no object of a
# workspace (a log cursor, a client-made id, or a kind this server does not have yet).
FIELD_KINDS: dict[str, str | None] = {
    "app_id": "app",
    "app_ids": "app",
    "function_ids": "function",
    "class_ids": "class",
    "definition_ids": "function",
    "environment_ids": "environment",
    "function_id": "function",
    "existing_function_id": "function",
    "base_function_id": "function",
    "parametrized_function_id": "function",
    "build_function_id": "function",
    "definition_id": "function",
    "object_id": "function",
    "existing_class_id": "class",
    "function_call_id": "function_call",
    "input_id": "input",
    "parent_input_id": "input",
    "task_id": "task",
    "container_id": "task",
    "original_task_id": "task",
    "image_id": "image",
    "existing_image_id": "image",
    "mount_ids": "mount",
    "context_mount_id": "mount",
    "blob_id": "blob",
    "args_blob_id": "blob",
    "data_blob_id": "blob",
    "secret_ids": "secret",
    "secret_id": "secret",
    "credentials_secret_id": "secret",
    "dict_id": "dict",
    "queue_id": "queue",
    "volume_id": "volume",
    "shared_volume_id": "volume",
    "last_entry_id": None,  # a log or queue cursor
    "client_id": None,  # made by the client
    "worker_id": None,
    "checkpoint_id": None,  # memory snapshots do not exist yet
    "sandbox_id": "sandbox",
    "proxy_id": None,  # proxies do not exist
}


def _paths(tree: IdFieldTree, prefix: str = "") -> Iterator[str]:
    for name, (_, below) in tree.items():
        if below is None:
            yield prefix + name
        else:
            yield from _paths(below, f"{prefix}{name}.")


def _request_types() -> dict[str, type[Message]]:
    class Names:
        def __getattr__(self, name: str) -> str:
            return name

    routes = api_grpc.ModalClientBase.__mapping__(Names())  # type: ignore[arg-type]
    handled = load_all()
    return {route.func: route.request_type for route in routes.values() if route.func in handled}


CASES = [
    (rpc, path)
    for rpc, request_type in sorted(_request_types().items())
    for path in _paths(id_field_tree(request_type.DESCRIPTOR))
]


def test_every_id_field_of_every_rpc_has_a_kind() -> None:
    unknown = sorted({f"{rpc}: {path}" for rpc, path in CASES if path.rsplit(".", 1)[-1] not in FIELD_KINDS})
    assert not unknown, f"add these fields to FIELD_KINDS (what kind of object do they name?): {unknown}"


def _with_id(request_type: type[Message], path: str, object_id: str) -> Message:
    request = request_type()
    message = request
    *parents, leaf = path.split(".")
    for name in parents:
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type.GetOptions().map_entry:
            message = getattr(message, name)["x"]
        else:
            message = getattr(message, name).add() if field.is_repeated else getattr(message, name)
    field = message.DESCRIPTOR.fields_by_name[leaf]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        getattr(message, leaf)["x"] = object_id
    elif field.is_repeated:
        getattr(message, leaf).append(object_id)
    else:
        setattr(message, leaf, object_id)
    return request


@pytest.fixture(scope="module")
def victims(server: Server) -> dict[str, str]:
    """One id of every kind, owned by the default workspace."""
    assert_ok(run_modal(server, "secret", "create", "owned-secret", "OWNED_TOKEN=hunter2", "--force"))
    assert_ok(run_modal(server, "deploy", "owned_objects.py"))
    assert_ok(
        run_python(
            server,
            "import modal\n"
            "modal.Dict.from_name('owned-dict', create_if_missing=True).put('k', 'v')\n"
            "modal.Queue.from_name('owned-queue', create_if_missing=True).put('item')\n"
            # over 8 KiB: the spawned input's argument travels as a blob
            "print(modal.Function.from_name('owned-objects', 'echo').spawn(b'x' * 20000).get(timeout=120))\n"
            "modal.Sandbox.create('sleep', 'infinity', app=modal.App.lookup('owned-sandboxes', create_if_missing=True))\n",
        )
    )
    database = sqlite3.connect(server.data_dir / "homeport.db")
    workspace = database.execute("SELECT id FROM workspaces WHERE name = 'main'").fetchone()[0]
    queries = {
        "app": "SELECT id FROM apps WHERE workspace_id = ?",
        "function": "SELECT f.id FROM functions f JOIN apps a ON a.id = f.app_id WHERE a.workspace_id = ?",
        "class": "SELECT c.id FROM classes c JOIN apps a ON a.id = c.app_id WHERE a.workspace_id = ?",
        "function_call": "SELECT id FROM function_calls WHERE workspace_id = ?",
        "input": "SELECT i.id FROM inputs i JOIN function_calls c ON c.id = i.function_call_id WHERE c.workspace_id = ?",
        "task": "SELECT id FROM tasks WHERE workspace_id = ?",
        "image": "SELECT id FROM images WHERE workspace_id = ?",
        "mount": "SELECT id FROM mounts WHERE workspace_id = ?",
        "blob": "SELECT id FROM blobs WHERE workspace_id = ?",
        "secret": "SELECT id FROM storage_objects WHERE kind = 'secret' AND workspace_id = ?",
        "dict": "SELECT id FROM storage_objects WHERE kind = 'dict' AND workspace_id = ?",
        "queue": "SELECT id FROM storage_objects WHERE kind = 'queue' AND workspace_id = ?",
        "volume": "SELECT id FROM storage_objects WHERE kind = 'volume' AND workspace_id = ?",
        "environment": "SELECT id FROM environments WHERE workspace_id = ?",
        "sandbox": "SELECT id FROM sandboxes WHERE workspace_id = ?",
        "sandbox_task": "SELECT task_id FROM sandboxes WHERE workspace_id = ? AND result IS NULL",
    }
    found = {kind: database.execute(query, (workspace,)).fetchone() for kind, query in queries.items()}
    database.close()
    missing = [kind for kind, row in found.items() if row is None]
    assert not missing, f"the default workspace should own one object of each kind; none of {missing}"
    return {kind: row[0] for kind, row in found.items() if row is not None}


@pytest.fixture(scope="module")
def intruder(server: Server) -> dict[str, str]:
    """Metadata of a token of another workspace."""
    created = server.homeport("workspace", "create", "intruder")
    assert created.returncode == 0 or "already exists" in created.stderr, created.stderr
    token = server.homeport("token", "create", "--workspace", "intruder")
    assert token.returncode == 0, token.stderr
    credentials = dict(line.split("=", 1) for line in token.stdout.split())
    return user_metadata(
        server,
        **{
            "x-modal-token-id": credentials["MODAL_TOKEN_ID"],
            "x-modal-token-secret": credentials["MODAL_TOKEN_SECRET"],
        },
    )


@pytest.mark.parametrize(
    ("rpc", "path"), [case for case in CASES if FIELD_KINDS.get(case[1].rsplit(".", 1)[-1])]
)
def test_another_workspaces_id_is_not_found(
    server: Server, victims: dict[str, str], intruder: dict[str, str], rpc: str, path: str
) -> None:
    kind = FIELD_KINDS[path.rsplit(".", 1)[-1]]
    assert kind is not None
    request = _with_id(_request_types()[rpc], path, victims[kind])
    with pytest.raises(GRPCError) as raised:
        call_raw(server, rpc, request, intruder)
    assert raised.value.status == Status.NOT_FOUND, raised.value.message
    assert victims[kind] in str(raised.value.message)


@pytest.mark.parametrize(
    ("rpc", "path"), [case for case in CASES if FIELD_KINDS.get(case[1].rsplit(".", 1)[-1]) == "task"]
)
def test_another_workspaces_sandbox_task_is_not_found(
    server: Server, victims: dict[str, str], intruder: dict[str, str], rpc: str, path: str
) -> None:
    """A sandbox's task id is a task id too (`modal container stop/exec/logs`)."""
    request = _with_id(_request_types()[rpc], path, victims["sandbox_task"])
    with pytest.raises(GRPCError) as raised:
        call_raw(server, rpc, request, intruder)
    assert raised.value.status == Status.NOT_FOUND, raised.value.message


def test_a_function_naming_another_workspaces_secret_never_runs(
    server: Server, victims: dict[str, str], intruder: dict[str, str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The reported attack, through the real client: workspace B defines a function with
    workspace A's secret id and calls it."""
    credentials = {
        "MODAL_TOKEN_ID": intruder["x-modal-token-id"],
        "MODAL_TOKEN_SECRET": intruder["x-modal-token-secret"],
    }
    script = (
        "import modal\n"
        "from modal.secret import _Secret\n"
        "from modal._utils.async_utils import synchronizer\n"
        "client = synchronizer._translate_in(modal.Client.from_env())\n"
        f"stolen = synchronizer._translate_out(_Secret._new_hydrated({victims['secret']!r}, client, None, skip_reload=True))\n"
        "app = modal.App('thief')\n"
        "@app.function(secrets=[stolen], serialized=True)\n"
        "def leak():\n"
        "    import os\n"
        "    return os.environ.get('OWNED_TOKEN')\n"
        "with app.run():\n"
        "    print('LEAKED', leak.remote())\n"
    )
    result = run_python(server, script, cwd=tmp_path, **credentials)
    text = output(result)
    assert result.returncode != 0, text
    assert "hunter2" not in text
    assert f"secret {victims['secret']} not found in this workspace" in text
