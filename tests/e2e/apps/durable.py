"""A deployed app for the crash-and-restart test."""

import time

import modal

app = modal.App("durable")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()  # no retries: a server crash must not count as a failure
def first_attempt_hangs(marker_dict: str) -> str:
    markers = modal.Dict.from_name(marker_dict, create_if_missing=True)
    if not markers.get("started"):
        markers["started"] = True
        time.sleep(600)
        return "first attempt"
    return "second attempt"


@app.function()
def slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


volume = modal.Volume.from_name("durable-commits", create_if_missing=True)


@app.function(volumes={"/data": volume})
def write_and_commit(name: str, text: str) -> str:
    with open(f"/data/{name}", "w") as file:
        file.write(text)
    volume.commit()
    return "committed"
