import modal

app = modal.App("hello")


@app.function()
def greet(name: str) -> str:
    print(f"container says hi to {name}")
    return f"Hello, {name}!"


@app.local_entrypoint()
def main(name: str = "Homeport"):
    print(greet.remote(name))
