"""An app whose images use every image-building method Homeport supports; each function
reports what its image put in place."""

import os
from pathlib import Path

import modal

HERE = Path(__file__).parent

image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("jq")
    .pip_install("six==1.16.0")
    .uv_pip_install("iniconfig==2.0.0")
    .run_commands("echo built > /opt/marker", "echo $HOME > /opt/home")
    .env({"GREETING": "hello from env", "SPACED": "a b  c"})
    .workdir("/srv/app")
    .add_local_file(HERE / "assets" / "one.txt", "/opt/files/one.txt", copy=True)
    .add_local_dir(HERE / "assets" / "nested", "/opt/files/nested", copy=True)
    .add_local_python_source("helper_pkg", copy=True)
    .dockerfile_commands(
        ["ARG FLAVOR=vanilla", "RUN echo $FLAVOR > /opt/flavor", "COPY assets/config.txt /opt/config.txt"],
        context_dir=HERE,
        build_args={"FLAVOR": "chocolate"},
    )
)

dockerfile_image = modal.Image.from_dockerfile(
    HERE / "image_context" / "Dockerfile", context_dir=HERE / "image_context"
)

app = modal.App("images-app")


def read(path: str) -> str:
    return Path(path).read_text().strip()


@app.function(image=image)
def inspect_builder_image() -> dict:
    import subprocess

    import helper_pkg
    import iniconfig
    import six

    return {
        "jq": subprocess.run(["jq", "-n", "1+1"], capture_output=True, text=True).stdout.strip(),
        "six": six.__version__,
        "iniconfig": iniconfig.__name__,
        "marker": read("/opt/marker"),
        "home": read("/opt/home"),
        "greeting": os.environ.get("GREETING"),
        "spaced": os.environ.get("SPACED"),
        "cwd": os.getcwd(),
        "one": read("/opt/files/one.txt"),
        "nested": sorted(p.name for p in Path("/opt/files/nested").iterdir()),
        "helper": helper_pkg.shout("copied"),
        "helper_file": helper_pkg.__file__,
        "flavor": read("/opt/flavor"),
        "config": read("/opt/config.txt"),
        "host_checkout_visible": Path(__file__).resolve().parent.joinpath("images_app.py").exists()
        and Path("/work").exists(),
    }


@app.function(image=dockerfile_image)
def inspect_dockerfile_image() -> dict:
    return {
        "cwd": os.getcwd(),
        "mode": os.environ.get("APP_MODE"),
        "home": os.environ.get("APP_HOME"),
        "settings": read("/srv/site/settings.toml"),
        "data": sorted(p.name for p in Path("/opt/data").iterdir()),
        "edition": read("/opt/edition"),
        "continued": read("/opt/made/line"),
        "exec": read("/opt/exec"),
        "shell": read("/opt/shell"),
        "build_user": read("/tmp/build-user"),
        "edition_env": os.environ.get("EDITION"),
    }


@app.local_entrypoint()
def main():
    print("BUILDER", inspect_builder_image.remote())
    print("DOCKERFILE", inspect_dockerfile_image.remote())
