"""The demo app: plain Modal code, run unchanged against Homeport."""

import modal

app = modal.App("hello")


@app.function()
def greet(name: str) -> str:
    print(f"(in the container) greeting {name}")
    return f"Hello, {name}!"


@app.function()
def square(x: int) -> int:
    return x * x


@app.local_entrypoint()
def main(name: str = "Homeport"):
    print(greet.remote(name))
    print("squares via .map():", list(square.map(range(10))))
