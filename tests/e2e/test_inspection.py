"""The client's inspection commands, answered from what really ran: modal function
info|stats|calls, modal app stats, Function.get_current_stats()."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Server, assert_ok, output, run_modal, run_python


@pytest.fixture(scope="module")
def ran(server: Server) -> Server:
    """basics deployed; square called 4 times, fail_on failing once."""
    assert_ok(run_modal(server, "deploy", "basics.py"))
    script = (
        "import modal\n"
        "square = modal.Function.from_name('basics', 'square')\n"
        "print('squares', [square.remote(i) for i in range(4)])\n"
        "print('stats', square.get_current_stats())\n"
        "try:\n    modal.Function.from_name('basics', 'fail_on').remote(3)\n"
        "except Exception as error:\n    print('failed', error)\n"
    )
    text = assert_ok(run_python(server, script))
    assert "squares [0, 1, 4, 9]" in text and "failed bad input 3" in text
    assert "backlog=0" in text and "num_running_inputs=0" in text
    return server


def test_function_calls_lists_each_input_with_its_outcome(ran: Server) -> None:
    calls = json.loads(assert_ok(run_modal(ran, "function", "calls", "basics/fail_on", "--json")))
    assert calls[0]["status"] == "failure" and calls[0]["container_id"].startswith("ta-")
    squares = json.loads(
        assert_ok(run_modal(ran, "function", "calls", "basics/square", "--json", "--tail", "4"))
    )
    assert len(squares) == 4 and {call["status"] for call in squares} == {"success"}
    assert all(call["execution_time_seconds"] is not None for call in squares)


def test_function_stats_count_what_ran(ran: Server) -> None:
    text = assert_ok(run_modal(ran, "function", "stats", "basics/fail_on"))
    assert "0 succeeded" in text and "1 failed" in text
    text = assert_ok(run_modal(ran, "function", "stats", "basics/square"))
    assert "succeeded" in text and "Execution time (s)" in text


def test_function_info_shows_the_autoscaler_settings(ran: Server) -> None:
    text = assert_ok(run_modal(ran, "function", "info", "basics/square"))
    assert "Scaledown Window: 60 seconds" in text and "Timeout: 300 seconds" in text


def test_app_stats_per_function(ran: Server) -> None:
    text = assert_ok(run_modal(ran, "app", "stats", "basics"))
    row = next(line for line in text.splitlines() if line.startswith("fail_on"))
    assert row.split()[1:3] == ["1", "100.0%"]


def test_a_reversed_range_is_a_clear_error(ran: Server) -> None:
    """The CLI checks its own flags; the server refuses a reversed range from any caller."""
    from grpclib import GRPCError, Status
    from modal_proto import api_pb2

    from tests.e2e.test_auth import call_raw, user_metadata

    function_id = assert_ok(
        run_python(
            ran, "import modal\nprint(modal.Function.from_name('basics', 'square').hydrate().object_id)"
        )
    ).split()[-1]
    request = api_pb2.FunctionGetTimeRangeStatsRequest(function_id=function_id)
    request.since.FromSeconds(2_000_000_000)
    request.until.FromSeconds(1_000_000_000)
    with pytest.raises(GRPCError) as raised:
        call_raw(ran, "FunctionGetTimeRangeStats", request, user_metadata(ran))
    assert raised.value.status == Status.INVALID_ARGUMENT
    assert "start is not before its end" in str(raised.value.message)


def test_an_unknown_function_is_not_found_by_name(ran: Server) -> None:
    result = run_modal(ran, "function", "stats", "basics/no_such_function")
    assert result.returncode != 0 and "no_such_function" in output(result)


def test_app_history_lists_each_deployment_newest_first(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "history_probe.py").write_text(
        "import modal\napp = modal.App('history-probe')\n@app.function()\ndef noop():\n    pass\n"
    )
    for _ in range(2):
        assert_ok(run_modal(server, "deploy", "history_probe.py", cwd=tmp_path))
    history = json.loads(assert_ok(run_modal(server, "app", "history", "history-probe", "--json")))
    assert [entry["version"] for entry in history] == ["v2", "v1"], history
    assert history[0]["client"] == "1.6.4" and history[0]["deployed_by"].startswith("ak-")


def test_function_metrics_export_counts_the_calls(ran: Server) -> None:
    import datetime

    until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    exported = json.loads(
        assert_ok(
            run_modal(
                ran, "function", "metrics", "basics/square", "--json", "--since", "30m", "--until", until
            )
        )
    )
    totals = {
        series["name"]: sum(point["value"] or 0 for point in series["points"])
        for series in exported["series"]
    }
    assert totals["calls_started_count"] >= 4 and totals["calls_succeeded_count"] >= 4
    assert totals["calls_failed_count"] == 0
    preview = assert_ok(run_modal(ran, "function", "metrics", "basics/square"))
    assert "--group calls" in preview and "Execution time (s)" in preview


def test_app_logs_over_a_range_are_counted_then_fetched(ran: Server) -> None:
    text = assert_ok(run_modal(ran, "app", "logs", "basics", "--since", "1h"))
    assert "squaring 3" in text
