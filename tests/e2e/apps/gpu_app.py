"""A test app asking for GPUs (run against a server with a fake inventory)."""

import os
import time

import modal

app = modal.App("gpus")


@app.function(gpu="A100")
def wants_a100() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@app.function(gpu="T4")
def wants_t4(hold_s: float = 0.0) -> str:
    time.sleep(hold_s)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@app.function(gpu=["H100", "T4"])
def h100_or_t4() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")
