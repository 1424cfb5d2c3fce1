"""enable_memory_snapshot=True on a function whose memory cannot be snapshotted: it holds a
connection to outside its container (the control plane's socket) across the snapshot."""

import os
import socket

import modal

app = modal.App("snapshot-fail-app")
HELD = socket.socket(socket.AF_UNIX)
if os.environ.get("MODAL_TASK_ID"):  # in a container, not in the deploying client
    HELD.connect("/__homeport/grpc.sock")


@app.function(enable_memory_snapshot=True, scaledown_window=2)
def ran() -> str:
    return f"ran in {os.environ['MODAL_TASK_ID']}"
