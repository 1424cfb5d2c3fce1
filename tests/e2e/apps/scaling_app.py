"""A test app for the autoscaler: fan-out, input concurrency, batching, crashes, warm containers."""

import os
import socket
import time

import modal

app = modal.App("scaling")


@app.function(max_containers=8)
def slow(i: int) -> str:
    time.sleep(2)
    return socket.gethostname()


@app.function(max_containers=1)
@modal.concurrent(max_inputs=8)
def shared(i: int) -> str:
    time.sleep(1)
    return socket.gethostname()


@app.function()
@modal.batched(max_batch_size=4, wait_ms=1000)
def batch_sizes(xs: list[int]) -> list[int]:
    return [len(xs)] * len(xs)


@app.function(retries=1)
def dies_once(marker: str) -> str:
    seen = modal.Dict.from_name(marker, create_if_missing=True)
    if not seen.get("died"):
        seen["died"] = True
        os.kill(os.getpid(), 9)  # the container dies mid-input
    return "survived"


@app.function(min_containers=1, scaledown_window=2)
def warm() -> str:
    return socket.gethostname()


@app.function(scaledown_window=2)
def cold() -> str:
    return socket.gethostname()
