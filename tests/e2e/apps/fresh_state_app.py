"""Import-time state of user code: fresh in every container, forked from a zygote or not."""

import os
import random
import socket
import time
import uuid

import modal

app = modal.App("fresh-state")

TOKEN = uuid.uuid4().hex  # computed when the container imports this module
IMPORT_RANDOM = random.random()


@app.function(max_containers=4)
def state(i: int) -> dict:
    time.sleep(1.5)  # keep the container busy so the map spreads over several
    return {
        "host": socket.gethostname(),
        "token": TOKEN,
        "import_random": IMPORT_RANDOM,
        "call_random": random.random(),
        "urandom": os.urandom(8).hex(),
    }
