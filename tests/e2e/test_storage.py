"""Dicts, Queues and Secrets through the real client and the modal CLI."""

from __future__ import annotations

import json

import pytest
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from tests.conftest import Server, assert_ok, output, run_modal, run_python
from tests.e2e.test_auth import call_raw, user_metadata


def test_dict_operations(server: Server) -> None:
    script = """
import modal
d = modal.Dict.from_name("semantics", create_if_missing=True)
d.clear()
d["a"] = 1
d.put("b", [1, 2])
print("get", d["a"], d.get("b"), d.get("missing", "fallback"), "a" in d, "zz" in d, d.len())
print("skip_if_exists", d.put("a", 5, skip_if_exists=True), d["a"])
d.update({"c": 3}, d=4)
print("keys", sorted(d.keys()), "values", sorted(map(str, d.values())), "items", sorted(map(str, d.items())))
print("pop", d.pop("c"), d.len())
try:
    d["missing"]
except KeyError:
    print("keyerror ok")
d.clear()
print("cleared", d.len())
with modal.Dict.ephemeral() as e:
    e["x"] = {"nested": True}
    print("ephemeral", e["x"])
"""
    text = assert_ok(run_python(server, script))
    assert "get 1 [1, 2] fallback True False 2" in text
    assert "skip_if_exists False 1" in text
    assert "keys ['a', 'b', 'c', 'd']" in text
    assert "pop 3 3" in text and "keyerror ok" in text and "cleared 0" in text
    assert "ephemeral {'nested': True}" in text


def test_dict_shared_between_functions_and_client(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "dictapp.py"
    app_file.write_text(
        "import modal\napp = modal.App('dictapp')\nd = modal.Dict.from_name('shared-dict', create_if_missing=True)\n"
        "@app.function()\ndef write(k, v):\n    d[k] = v\n    return d.len()\n"
        "@app.local_entrypoint()\ndef main():\n    write.remote('from-container', 42)\n    print('READ', d['from-container'])\n"
    )
    assert "READ 42" in assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))


def test_dict_cli(server: Server) -> None:
    assert_ok(run_modal(server, "dict", "create", "cli-dict"))
    assert_ok(
        run_python(server, "import modal\nd = modal.Dict.from_name('cli-dict')\nd['k'] = 'v'\nd['n'] = 3")
    )
    assert "cli-dict" in assert_ok(run_modal(server, "dict", "list"))
    assert assert_ok(run_modal(server, "dict", "get", "cli-dict", "k")).strip() == "v"
    items = json.loads(assert_ok(run_modal(server, "dict", "items", "cli-dict", "--json")))
    assert sorted((i["key"], str(i["value"])) for i in items) == [("k", "v"), ("n", "3")]
    assert_ok(run_modal(server, "dict", "clear", "cli-dict", "--yes"))
    assert_ok(run_modal(server, "dict", "delete", "cli-dict", "--yes"))
    gone = run_python(server, "import modal\nmodal.Dict.from_name('cli-dict').len()")
    assert gone.returncode != 0 and "Dict 'cli-dict' not found" in output(gone)


def test_queue_operations(server: Server) -> None:
    script = """
import modal, queue, threading, time
q = modal.Queue.from_name("semantics-q", create_if_missing=True)
q.clear(all=True)
q.put(1)
q.put_many([2, 3, 4])
print("len", q.len(), "get", q.get(), "many", q.get_many(2), "left", q.len())
q.put("p", partition="p1")
print("partition", q.len(partition="p1"), "total", q.len(total=True), q.get(partition="p1"))
print("iterate", list(q.iterate()), "still", q.len())
q.get()
print("nonblocking", q.get(block=False))
try:
    q.get(timeout=0.3)
except queue.Empty:
    print("empty ok")
put_at = []
def later():
    time.sleep(1.0)
    put_at.append(time.monotonic())
    modal.Queue.from_name("semantics-q").put("late")
threading.Thread(target=later).start()
value = q.get(timeout=10)
print("blocking", value, "woke after put", round(time.monotonic() - put_at[0], 3))
"""
    text = assert_ok(run_python(server, script))
    assert "len 4 get 1 many [2, 3] left 1" in text
    assert "partition 1 total 2 p" in text
    assert "iterate [4] still 1" in text
    assert "nonblocking None" in text and "empty ok" in text
    woke = float(text.split("woke after put ")[1].split()[0])
    assert "blocking late" in text and woke < 1.0  # woken by the put, not by a polling tick


def test_queue_item_over_the_size_limit_is_refused_clearly(server: Server) -> None:
    result = run_python(
        server,
        "import modal\nq = modal.Queue.from_name('big-q', create_if_missing=True)\nq.put(b'x' * (2 * 1024 * 1024))",
    )
    assert result.returncode != 0
    assert "over the limit of 1048576 bytes" in output(result)


def test_queue_cli(server: Server) -> None:
    assert_ok(run_modal(server, "queue", "create", "cli-q"))
    assert_ok(
        run_python(
            server,
            "import modal\nq = modal.Queue.from_name('cli-q')\nq.put_many([1, 2, 3])\nq.put('x', partition='p')",
        )
    )
    assert assert_ok(run_modal(server, "queue", "len", "cli-q")).strip() == "3"
    assert assert_ok(run_modal(server, "queue", "len", "cli-q", "--total")).strip() == "4"
    assert assert_ok(run_modal(server, "queue", "peek", "cli-q", "2")).split() == ["1", "2"]
    assert "cli-q" in assert_ok(run_modal(server, "queue", "list"))
    assert_ok(run_modal(server, "queue", "clear", "cli-q", "--yes"))
    assert assert_ok(run_modal(server, "queue", "len", "cli-q")).strip() == "0"
    assert_ok(run_modal(server, "queue", "delete", "cli-q", "--yes"))


def test_unpicklable_key_is_a_clear_client_error(server: Server) -> None:
    result = run_python(
        server,
        "import modal, threading\nd = modal.Dict.from_name('pickles', create_if_missing=True)\nd[threading.Lock()] = 1",
    )
    assert result.returncode != 0 and "pickle" in output(result).lower()


def test_secrets_reach_functions_and_never_the_logs(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dotenv = tmp_path / ".env"
    dotenv.write_text("FROM_DOTENV=dotenv-value-777\n")
    assert_ok(
        run_modal(server, "secret", "create", "api-keys", "API_KEY=super-secret-value-123", "OTHER=plain")
    )
    assert_ok(run_modal(server, "secret", "create", "from-file", "--from-dotenv", str(dotenv)))
    listing = assert_ok(run_modal(server, "secret", "list"))
    assert "api-keys" in listing and "from-file" in listing and "super-secret-value-123" not in listing
    app_file = tmp_path / "secretapp.py"
    app_file.write_text(
        "import os, modal\napp = modal.App('secretapp')\n"
        "@app.function(secrets=[modal.Secret.from_name('api-keys'), modal.Secret.from_name('from-file'),\n"
        "                       modal.Secret.from_dict({'INLINE': 'inline-value-456'})])\n"
        "def show():\n    print('the key is', os.environ['API_KEY'])\n"
        # Reversed: a return value is stored as the function gave it, and the database
        # must be seen to hold no secret value of its own accord.
        "    return [os.environ[k][::-1] for k in ('API_KEY', 'OTHER', 'FROM_DOTENV', 'INLINE')]\n"
        "@app.local_entrypoint()\ndef main():\n    print('RESULT', show.remote())\n"
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    assert "RESULT ['321-eulav-terces-repus', 'nialp', '777-eulav-vnetod', '654-eulav-enilni']" in text
    assert "the key is ***" in text  # the container printed it; the logs carry no value
    assert b"super-secret-value-123" not in (server.data_dir / "homeport.db").read_bytes()
    assert "super-secret-value-123" not in server.log_text()
    exists = run_modal(server, "secret", "create", "api-keys", "API_KEY=again")
    assert exists.returncode != 0 and "already exists" in output(exists)
    assert_ok(run_modal(server, "secret", "create", "api-keys", "API_KEY=rotated-value-789", "--force"))
    rotated = run_python(
        server,
        "import modal\nprint(modal.Secret.from_name('api-keys', required_keys=['API_KEY']).hydrate().object_id)\n"
        "modal.Secret.from_name('api-keys', required_keys=['NOPE']).hydrate()",
    )
    assert "missing the required keys: NOPE" in output(rotated)
    assert_ok(run_modal(server, "secret", "delete", "from-file", "--yes"))
    assert "from-file" not in assert_ok(run_modal(server, "secret", "list"))


def test_other_workspaces_cannot_reach_storage_objects(server: Server) -> None:
    created = server.homeport("workspace", "create", "team-storage")
    assert created.returncode == 0, created.stderr
    token = server.homeport("token", "create", "--workspace", "team-storage")
    other = dict(line.split("=", 1) for line in token.stdout.split())
    dict_id = assert_ok(
        run_python(
            server,
            "import modal\nd = modal.Dict.from_name('private', create_if_missing=True)\nd['k'] = 1\nprint(d.object_id)",
        )
    ).split()[-1]
    by_name = run_python(server, "import modal\nmodal.Dict.from_name('private').len()", **other)
    assert by_name.returncode != 0 and "not found" in output(by_name)
    other_metadata = user_metadata(
        server,
        **{"x-modal-token-id": other["MODAL_TOKEN_ID"], "x-modal-token-secret": other["MODAL_TOKEN_SECRET"]},
    )
    with pytest.raises(GRPCError) as raised:
        call_raw(server, "DictGet", api_pb2.DictGetRequest(dict_id=dict_id, key=b"k"), other_metadata)
    assert raised.value.status == Status.NOT_FOUND
