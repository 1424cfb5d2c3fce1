"""A test app sharing a Volume between containers."""

import os

import modal

app = modal.App("volumes")
vol = modal.Volume.from_name("shared-volume", create_if_missing=True)


@app.function(volumes={"/data": vol})
def write(name: str, content: str, commit: bool = True) -> None:
    with open(f"/data/{name}", "w") as file:
        file.write(content)
    if commit:
        vol.commit()


@app.function(volumes={"/data": vol})
def read(name: str, reload: bool) -> str | None:
    if reload:
        vol.reload()
    path = f"/data/{name}"
    return open(path).read() if os.path.exists(path) else None


@app.function(volumes={"/data": vol}, max_containers=4)
def overwrite(args) -> int:
    name, byte, size = args
    with open(f"/data/{name}", "wb") as file:
        file.write(bytes([byte]) * size)
    vol.commit()
    return byte
