"""A test app exercising the calling conventions of the modal client."""

import os
import time

import modal

app = modal.App("basics")


@app.function()
def square(x: int):
    print(f"squaring {x}")
    return x * x


@app.function()
def add(a, b):
    return a + b


@app.function()
def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


@app.function()
def countdown(n):
    yield from range(n, 0, -1)


@app.function()
def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


@app.function()
def payload_size(data):
    return len(data)


@app.function()
def make_payload(size):
    return os.urandom(size)


@app.function()
def crash(code):
    print("about to crash", flush=True)
    os._exit(code)


@app.function()
def shout(lines):
    for number in range(lines):
        print(f"shouting line {number:05d} " + "x" * 60)
    return lines


@app.function()
def fill_disk(mib):
    with open("/tmp/filler", "wb") as filler:
        for _ in range(mib):
            filler.write(os.urandom(1024 * 1024))
            filler.flush()
            os.fsync(filler.fileno())
            time.sleep(0.05)
    return "wrote it all"


@app.function()
def killed():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@app.function(timeout=2)
def too_slow():
    time.sleep(30)


@app.function(retries=modal.Retries(max_retries=2, initial_delay=0.1, backoff_coefficient=1.0))
def flaky(counter_name):
    # Fails on the first two attempts, succeeds on the third. The count lives in a Dict:
    # containers cannot write to the caller's files.
    counter = modal.Dict.from_name(counter_name, create_if_missing=True)
    attempts = counter.get("attempts", 0)
    counter["attempts"] = attempts + 1
    if attempts < 2:
        raise RuntimeError(f"attempt {attempts} failed")
    return attempts


@app.function()
def talk(lines: int):
    import sys

    for i in range(lines):
        print(f"stdout line {i}")
        print(f"stderr line {i}", file=sys.stderr)
        time.sleep(0.2)
    return lines


@app.local_entrypoint()
def main(x: int = 7):
    print("square is", square.remote(x))


@app.function()
def identity(x):
    return x
