"""A deployed app for the crash-and-restart test."""

import os
import time

import modal

app = modal.App("durable")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function(retries=1)
def first_attempt_hangs(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(600)
        return "first attempt"
    return "second attempt"
