"""A test app with resource limits."""

import resource
import time

import modal

app = modal.App("limits")


@app.function(memory=200)
def allocate(megabytes: int) -> int:
    chunks = []
    for _ in range(megabytes // 10):
        chunks.append(bytearray(10 * 1024 * 1024))
    return len(chunks) * 10


@app.function(cpu=0.25)
def burn(seconds: float) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        pass
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return used / (time.monotonic() - started)  # cores used while spinning


@app.function(ephemeral_disk=64)
def write_files(megabytes: int) -> str:
    try:
        with open("/tmp/filler", "wb") as file:
            for _ in range(megabytes):
                file.write(b"\0" * (1024 * 1024))
        return f"wrote {megabytes} MiB"
    except OSError as error:
        return f"refused: {error.strerror}"
