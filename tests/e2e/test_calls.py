"""Calling functions through the real modal client: every calling convention a user has."""

from __future__ import annotations

import textwrap

from tests.conftest import Server, assert_ok, run_modal, run_python


def in_app(body: str) -> str:
    """A script that imports the basics app and runs `body` inside `app.run()`."""
    return "import modal, time, tempfile\nfrom basics import *\nwith app.run():\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )


def test_modal_run_local_entrypoint_prints_result_and_container_output(server: Server) -> None:
    text = assert_ok(run_modal(server, "run", "basics.py", "--x", "6"))
    assert "square is 36" in text
    assert "squaring 6" in text  # the container's own print, streamed to the terminal


def test_modal_run_single_function(server: Server) -> None:
    text = assert_ok(run_modal(server, "run", "basics.py::square", "--x", "5"))
    assert "squaring 5" in text


def test_app_run_from_a_script_remote_and_local(server: Server) -> None:
    text = assert_ok(
        run_python(server, in_app("print('remote', square.remote(3)); print('local', square.local(4))"))
    )
    assert "remote 9" in text and "local 16" in text


def test_map_keeps_input_order(server: Server) -> None:
    text = assert_ok(run_python(server, in_app("print(list(square.map(range(20))))")))
    assert str([x * x for x in range(20)]) in text


def test_map_unordered_returns_every_result(server: Server) -> None:
    text = assert_ok(run_python(server, in_app("print(sorted(square.map(range(20), order_outputs=False)))")))
    assert str([x * x for x in range(20)]) in text


def test_map_return_exceptions_puts_the_exception_in_place(server: Server) -> None:
    text = assert_ok(run_python(server, in_app("print(list(fail_on.map(range(5), return_exceptions=True)))")))
    assert "[0, 1, 2, ValueError('bad input 3'), 4]" in text


def test_starmap_and_for_each(server: Server) -> None:
    script = in_app(
        "print('starmap', list(add.starmap([(1, 2), (3, 4)]))); add.for_each([1, 2], [3, 4]); print('for_each done')"
    )
    text = assert_ok(run_python(server, script))
    assert "starmap [3, 7]" in text and "for_each done" in text


def test_spawn_get_times_out_then_returns(server: Server) -> None:
    script = in_app(
        """
        call = sleep_then_return.spawn(2, "late")
        try:
            call.get(timeout=0.2)
            print("no timeout")
        except TimeoutError:
            print("timed out first")
        print("then", call.get(timeout=30))
        """
    )
    text = assert_ok(run_python(server, script))
    assert "timed out first" in text and "then late" in text


def test_remote_gen_yields_every_value(server: Server) -> None:
    text = assert_ok(run_python(server, in_app("print(list(countdown.remote_gen(5)))")))
    assert "[5, 4, 3, 2, 1]" in text


def test_async_forms(server: Server) -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from basics import *

        async def main():
            async with app.run():
                print("aio", await square.remote.aio(8))
                print("map.aio", [x async for x in square.map.aio(range(4))])

        asyncio.run(main())
        """
    )
    text = assert_ok(run_python(server, script))
    assert "aio 64" in text and "map.aio [0, 1, 4, 9]" in text


def test_remote_exception_keeps_its_type_and_remote_traceback(server: Server) -> None:
    script = in_app(
        """
        import traceback
        try:
            fail_on.remote(3)
        except ValueError as error:
            print("caught", repr(error))
            print("".join(traceback.format_exception(error)))
        """
    )
    text = assert_ok(run_python(server, script))
    assert "caught ValueError('bad input 3')" in text
    # The remote frame, named after the container that ran it.
    assert ':/root/basics.py", line' in text and "in fail_on" in text


def test_retries_rerun_failed_inputs(server: Server) -> None:
    script = in_app(
        """
        print('attempts', flaky.remote('retry-counter'))
        print('counted', modal.Dict.from_name('retry-counter')['attempts'])
        """
    )
    text = assert_ok(run_python(server, script))
    assert "attempts 2" in text  # two failures, then success on the third attempt
    assert "counted 3" in text


def test_timeout_raises_function_timeout_error(server: Server) -> None:
    script = in_app(
        """
        try:
            too_slow.remote()
        except modal.exception.FunctionTimeoutError as error:
            print("timeout:", error)
        """
    )
    text = assert_ok(run_python(server, script))
    assert "timeout: Function timed out after 2 seconds" in text


def test_container_that_dies_fails_its_input_with_the_exit_code(server: Server) -> None:
    script = in_app(
        """
        try:
            crash.remote(3)
        except Exception as error:
            print("error:", type(error).__name__, error)
        """
    )
    text = assert_ok(run_python(server, script))
    assert "error: RemoteError" in text and "exited with code 3" in text


def test_a_container_killed_by_a_signal_says_137_and_the_signal(server: Server) -> None:
    script = in_app(
        """
        try:
            killed.remote()
        except Exception as error:
            print("error:", type(error).__name__, error)
        """
    )
    text = assert_ok(run_python(server, script))
    assert "exited with code 137 (killed by signal 9)" in text


def test_large_arguments_and_results_travel_as_blobs(server: Server) -> None:
    size = 50 * 1024 * 1024
    script = in_app(
        f"""
        print("in", payload_size.remote(b"x" * {size}))
        print("out", len(make_payload.remote({size})))
        """
    )
    text = assert_ok(run_python(server, script, timeout=300))
    assert f"in {size}" in text and f"out {size}" in text
    blob_files = [p for p in (server.data_dir / "blobs").rglob("bl-*") if p.stat().st_size >= size]
    assert len(blob_files) >= 2


def test_function_call_from_id_in_another_process(server: Server) -> None:
    assert_ok(run_modal(server, "deploy", "basics.py"))
    spawned = assert_ok(
        run_python(
            server, "import modal\nprint(modal.Function.from_name('basics', 'square').spawn(12).object_id)"
        )
    )
    call_id = spawned.strip().splitlines()[-1]
    assert call_id.startswith("fc-")
    text = assert_ok(
        run_python(
            server, f"import modal\nprint('got', modal.FunctionCall.from_id({call_id!r}).get(timeout=60))"
        )
    )
    assert "got 144" in text


def test_cancelling_a_running_call_ends_it_and_frees_its_container(server: Server) -> None:
    assert_ok(run_modal(server, "deploy", "durable.py"))
    text = assert_ok(
        run_python(
            server,
            textwrap.dedent(
                """
                import time, modal
                markers = modal.Dict.from_name("cancel-marker", create_if_missing=True)
                call = modal.Function.from_name("durable", "first_attempt_hangs").spawn("cancel-marker")
                deadline = time.monotonic() + 60
                while not markers.get("started"):  # the input is running (it sleeps 600 s)
                    assert time.monotonic() < deadline, "the input never started"
                    time.sleep(0.1)
                started = time.monotonic()
                call.cancel()
                try:
                    call.get(timeout=60)
                    print("returned")
                except Exception as error:
                    print("raised", type(error).__name__, error)
                print("ended within", round(time.monotonic() - started))
                # The container that ran it takes the next input (its second attempt).
                print("next", modal.Function.from_name("durable", "first_attempt_hangs").remote("cancel-marker"))
                """
            ),
            timeout=180,
        )
    )
    assert "raised" in text and "cancelled" in text, text
    assert int(text.split("ended within ")[1].split()[0]) < 30, text
    assert "next second attempt" in text, text
