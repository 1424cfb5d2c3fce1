"""enable_memory_snapshot=True: a slow snap=True hook, a snap=False hook per container."""

import os
import socket
import time
import uuid

import modal

app = modal.App("snapshot-app")
SLOW_S = 3.0
IMPORT_TOKEN = uuid.uuid4().hex  # made once, before the snapshot


@app.cls(enable_memory_snapshot=True, scaledown_window=2)
class Model:
    @modal.enter(snap=True)
    def load(self) -> None:
        time.sleep(SLOW_S)  # a model load, paid once
        self.loaded = uuid.uuid4().hex
        self.loaded_at = time.time()
        with open("/root/loaded.txt", "w") as handle:  # in the writable layer at the snapshot
            handle.write(self.loaded)

    @modal.enter(snap=False)
    def setup(self) -> None:
        self.mine = uuid.uuid4().hex
        self.setup_task = os.environ.get("MODAL_TASK_ID", "")

    @modal.method()
    def info(self, hold_s: float = 0.0) -> dict[str, object]:
        time.sleep(hold_s)  # busy: a call made meanwhile gets a container of its own
        with open(f"/tmp/seen-{self.mine}", "w"):
            pass
        return {
            "import": IMPORT_TOKEN,
            "loaded": self.loaded,
            "file": open("/root/loaded.txt").read(),
            "mine": self.mine,
            "setup_task": self.setup_task,
            "task": os.environ.get("MODAL_TASK_ID", ""),
            "hostname": socket.gethostname(),
            "seen": sorted(name for name in os.listdir("/tmp") if name.startswith("seen-")),
            "pid": os.getpid(),
            "node": os.environ.get("HOMEPORT_NODE_ID", ""),
        }


@app.function(enable_memory_snapshot=True, scaledown_window=2)
def imported() -> str:
    """A plain function: its module's import-time state is what the snapshot keeps."""
    return f"{IMPORT_TOKEN} {os.environ.get('MODAL_TASK_ID', '')}"


@app.cls(scaledown_window=2)
class PlainModel:
    """The same slow start without a snapshot: the baseline of bench/bench_memory_snapshots.py."""

    @modal.enter()
    def load(self) -> None:
        time.sleep(SLOW_S)
        self.loaded = uuid.uuid4().hex

    @modal.method()
    def info(self, hold_s: float = 0.0) -> dict[str, object]:
        return {"loaded": self.loaded, "task": os.environ.get("MODAL_TASK_ID", "")}
