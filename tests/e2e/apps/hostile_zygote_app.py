"""An image with a start-up hook (a .pth file) that probes its zygote for ways out."""

import modal

INSTALL = (
    'python -c "import site, shutil; d = site.getsitepackages()[0]; '
    "shutil.copy('/tmp/hostile_zygote_probe.py', d); "
    "open(d + '/hostile_zygote_probe.pth', 'w').write('import hostile_zygote_probe' + chr(10))\""
)
image = (
    modal.Image.debian_slim()
    .add_local_file("hostile_zygote_probe.py", "/tmp/hostile_zygote_probe.py", copy=True)
    .run_commands(INSTALL)
)
app = modal.App("hostile-zygote", image=image)


@app.function()
def hello() -> str:
    import os

    return "hello from " + os.uname().nodename
