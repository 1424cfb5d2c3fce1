"""A test app for cluster mode: where each input runs, an image with a layer of its own,
a Volume written on one node and read on others, a GPU function, a web endpoint."""

import os
import sys
import time

import modal

app = modal.App("cluster")
image = modal.Image.debian_slim().run_commands("echo built-once > /built.txt")
vol = modal.Volume.from_name("cluster-volume", create_if_missing=True)


@app.function(image=image, cpu=0.25)
def where(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["HOMEPORT_NODE_ID"]


@app.function(image=image, cpu=0.25)
def hold(seconds: float) -> str:
    """Only the replica test calls it: no warm container of another test takes its input."""
    time.sleep(seconds)
    return os.environ["HOMEPORT_NODE_ID"]


@app.function(image=image, cpu=0.25)
def image_file(seconds: float) -> tuple[str, str]:
    time.sleep(seconds)
    return os.environ["HOMEPORT_NODE_ID"], open("/built.txt").read().strip()


@app.function(volumes={"/data": vol}, cpu=0.25)
def write(name: str, content: str) -> str:
    with open(f"/data/{name}", "w") as file:
        file.write(content)
    vol.commit()
    return os.environ["HOMEPORT_NODE_ID"]


@app.function(volumes={"/data": vol}, cpu=0.25)
def read(name: str, seconds: float) -> tuple[str, str | None]:
    time.sleep(seconds)
    vol.reload()
    path = f"/data/{name}"
    return os.environ["HOMEPORT_NODE_ID"], open(path).read() if os.path.exists(path) else None


@app.function(gpu="A10G", scaledown_window=2)  # node-1's one GPU is free again for the sandbox test
def gpu_node() -> tuple[str, str]:
    return os.environ["HOMEPORT_NODE_ID"], os.environ.get("CUDA_VISIBLE_DEVICES", "")


@app.function(gpu="H100")
def impossible_gpu() -> str:
    return "never"


# More memory than node-0 has for containers (the tests make it small): a worker node runs it.
@app.function(image=modal.Image.debian_slim().pip_install("fastapi[standard]"), memory=1500)
@modal.fastapi_endpoint()
def node_page() -> dict:
    return {"node": os.environ["HOMEPORT_NODE_ID"]}


@app.local_entrypoint()
def main(count: int = 24, seconds: float = 2.0) -> None:
    nodes = list(where.map([seconds] * count))
    print("NODES", sorted(set(nodes)), len(nodes))
    sys.stdout.flush()
