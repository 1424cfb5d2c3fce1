"""A class whose variants (`with_options`, `with_concurrency`) each change one setting."""

import os
import resource
import socket
import time

import modal

app = modal.App("variants")
volume = modal.Volume.from_name("variants-volume", create_if_missing=True)


@app.cls()
class Worker:
    @modal.method()
    def probe(self) -> dict:
        return {
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "secret": os.environ.get("VARIANT_TOKEN"),
            "volume": sorted(os.listdir("/variant-data")) if os.path.isdir("/variant-data") else None,
            "host": socket.gethostname(),
        }

    @modal.method()
    def spin(self, seconds: float) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            pass
        after = resource.getrusage(resource.RUSAGE_SELF)
        return ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / (
            time.monotonic() - started
        )

    @modal.method()
    def fail_once(self, key: str) -> str:
        attempts = modal.Dict.from_name("variants-attempts", create_if_missing=True)
        seen = attempts.get(key, 0)
        attempts[key] = seen + 1
        if seen == 0:
            raise RuntimeError("first attempt fails")
        return f"attempt {seen + 1}"

    @modal.method()
    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return socket.gethostname()


@app.cls(scaledown_window=2)
class SlowStart:
    """Its start-up outlasts its scaledown window."""

    @modal.enter()
    def load(self):
        time.sleep(3)

    @modal.method()
    def ping(self) -> str:
        return "pong"
