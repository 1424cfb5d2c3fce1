"""What this node's GPUs look like to Homeport, and whether a sandbox can use one.

    python3 scripts/gpu_check.py        (as root, on a machine with NVIDIA GPUs)

Prints the inventory Homeport detects (the names `gpu=` matches), the driver files bound
into GPU containers, and then runs `nvidia-smi` inside a bubblewrap sandbox built the way
worker/sandbox.py builds GPU containers (only GPU 0's device node and the control nodes,
the driver bound read-only, no capabilities, CUDA_VISIBLE_DEVICES=0), when bwrap is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from homeport.agent import gpus
from homeport.agent.sandbox import _gpu_device_nodes


def main() -> int:
    models = gpus.detect()
    print("detected:", models or "no GPUs")
    files = gpus.driver_files()
    print(f"driver files bound into GPU containers: {len(files)}")
    for path in files[:40]:
        print("  ", path)
    nodes = _gpu_device_nodes([0]) if models else []
    print("device nodes for GPU 0:", nodes)
    bwrap = shutil.which("bwrap")
    if not models or bwrap is None:
        print("sandbox check skipped:", "no GPU" if not models else "bwrap is not installed")
        return 0 if models else 1
    command = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--cap-drop", "ALL",
               "--setenv", "CUDA_VISIBLE_DEVICES", "0"]  # fmt: skip
    for node in nodes:
        command += ["--dev-bind", node, node]
    for path in files:
        command += ["--ro-bind", path, path]
    command += ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    print("inside the sandbox:", result.returncode, result.stdout.strip(), result.stderr.strip()[-500:])
    visible = [line for line in result.stdout.splitlines() if line.strip()]
    print("GPUs visible inside:", len(visible), "of", len(models))
    return 0 if result.returncode == 0 and len(visible) == 1 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
