"""Local files reaching containers as mounts (copy=False)."""

import pathlib

import modal

image = (
    modal.Image.debian_slim()
    .add_local_python_source("helper_pkg")
    .add_local_dir("assets", remote_path="/root/assets")
    .add_local_file("assets/config.txt", remote_path="/data/config.txt")
)
app = modal.App("mounts", image=image)


@app.function()
def inspect() -> dict:
    import helper_pkg

    return {
        "shout": helper_pkg.shout("mounted"),
        "dir": sorted(
            str(p.relative_to("/root/assets")) for p in pathlib.Path("/root/assets").rglob("*") if p.is_file()
        ),
        "file": pathlib.Path("/data/config.txt").read_text().strip(),
    }


@app.local_entrypoint()
def main():
    print("RESULT", inspect.remote())
