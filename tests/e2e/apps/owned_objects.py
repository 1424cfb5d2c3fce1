"""Objects of every kind in one workspace, for the cross-workspace tests to aim at."""

import modal

app = modal.App("owned-objects")
volume = modal.Volume.from_name("owned-volume", create_if_missing=True)


@app.function(secrets=[modal.Secret.from_name("owned-secret")], volumes={"/data": volume})
def echo(payload):
    import os

    return len(payload), os.environ["OWNED_TOKEN"]


@app.cls()
class Model:
    @modal.method()
    def ping(self):
        return "pong"
