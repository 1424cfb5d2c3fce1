"""What was acknowledged survives `kill -9` of the server."""

from __future__ import annotations

from tests.conftest import Server, assert_ok, run_modal, run_python


def test_kill_9_loses_nothing_acknowledged(own_server: Server) -> None:
    server = own_server
    assert_ok(run_modal(server, "deploy", "durable.py"))
    done_call = assert_ok(
        run_python(
            server,
            "import modal\ncall = modal.Function.from_name('durable', 'square').spawn(12)\n"
            "call.get(timeout=60)\nprint(call.object_id)",
        )
    ).split()[-1]
    running_call = assert_ok(
        run_python(
            server,
            "import modal\nprint(modal.Function.from_name('durable', 'first_attempt_hangs').spawn('hang-marker').object_id)",
        )
    ).split()[-1]
    assert_ok(
        run_python(
            server,
            "import modal, time\nmarkers = modal.Dict.from_name('hang-marker', create_if_missing=True)\n"
            "deadline = time.monotonic() + 60\nwhile not markers.get('started'):\n"
            "    assert time.monotonic() < deadline, 'the input never started'\n    time.sleep(0.1)\n",
        )
    )

    server.stop(hard=True)
    server.start()

    text = assert_ok(
        run_python(
            server,
            "import modal\n"
            f"print('done', modal.FunctionCall.from_id({done_call!r}).get(timeout=60))\n"
            f"print('rerun', modal.FunctionCall.from_id({running_call!r}).get(timeout=120))\n"
            "print('deployed', modal.Function.from_name('durable', 'square').remote(7))\n",
        )
    )
    assert "done 144" in text
    assert "rerun second attempt" in text  # run again after the restart, though it has no retries
    assert "deployed 49" in text


def test_storage_objects_survive_kill_9(own_server: Server) -> None:
    server = own_server
    assert_ok(
        run_python(
            server,
            "import modal\n"
            "d = modal.Dict.from_name('durable-dict', create_if_missing=True)\nd['k'] = 'acknowledged'\n"
            "q = modal.Queue.from_name('durable-q', create_if_missing=True)\nq.put_many([1, 2, 3])\n"
            "modal.Secret.objects.create('durable-secret', {'TOKEN': 'kept-1234'})\n",
        )
    )
    server.stop(hard=True)
    server.start()
    text = assert_ok(
        run_python(
            server,
            "import modal\n"
            "print('dict', modal.Dict.from_name('durable-dict')['k'])\n"
            "print('queue', modal.Queue.from_name('durable-q').get_many(10))\n"
            "print('secret', modal.Secret.from_name('durable-secret', required_keys=['TOKEN']).hydrate().object_id)\n",
        )
    )
    assert "dict acknowledged" in text and "queue [1, 2, 3]" in text and "secret st-" in text


def test_committed_volume_files_survive_kill_9(own_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = own_server
    source = tmp_path / "kept.txt"
    source.write_text("committed before the crash")
    assert_ok(run_modal(server, "volume", "create", "durable-vol"))
    assert_ok(run_modal(server, "volume", "put", "durable-vol", str(source), "/kept.txt"))
    server.stop(hard=True)
    server.start()
    text = assert_ok(
        run_python(
            server,
            "import modal\nprint(b''.join(modal.Volume.from_name('durable-vol').read_file('kept.txt')))",
        )
    )
    assert "committed before the crash" in text
