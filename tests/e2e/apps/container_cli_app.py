"""A deployed function that keeps one container up, for `modal container list/logs/stop`."""

import socket

import modal

app = modal.App("container-cli")

print("container-cli imported in", socket.gethostname(), flush=True)


@app.function(min_containers=1)
def serve() -> str:
    return socket.gethostname()
