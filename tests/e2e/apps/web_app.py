"""A test app with web endpoints of every kind."""

import modal

# Web endpoints need FastAPI in the image, as on Modal.
web_image = modal.Image.debian_slim().pip_install("fastapi[standard]")
app = modal.App("webapp", image=web_image)


@app.function()
@modal.fastapi_endpoint(method="POST")
def echo(payload: dict) -> dict:
    return {"received": payload, "keys": sorted(payload)}


@app.function()
@modal.fastapi_endpoint(label="hello-label")
def hello(name: str = "world"):
    return {"hello": name}


@app.function()
@modal.fastapi_endpoint()
def boom():
    raise RuntimeError("this endpoint always fails")


@app.function()
@modal.fastapi_endpoint(requires_proxy_auth=True)
def guarded():
    return {"secret": "only with proxy auth"}


@app.function()
@modal.asgi_app()
def api():
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import RedirectResponse, StreamingResponse

    web_app = FastAPI()

    @web_app.get("/status/{code}")
    def status(code: int):
        from fastapi import Response

        return Response(content=f"status {code}", status_code=code, headers={"X-Custom": "yes"})

    @web_app.get("/redirect")
    def redirect():
        return RedirectResponse("/status/200")

    @web_app.get("/cookie")
    def cookie(request: Request):
        from fastapi.responses import JSONResponse

        response = JSONResponse({"seen": request.cookies.get("flavor")})
        response.set_cookie("flavor", "oatmeal")
        return response

    @web_app.post("/size")
    async def size(request: Request):
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"bytes": total}

    @web_app.get("/stream")
    def stream():
        import time

        def events():
            for i in range(5):
                yield f"data: event {i}\n\n"
                time.sleep(0.3)

        return StreamingResponse(events(), media_type="text/event-stream")

    @web_app.get("/download/{megabytes}")
    def download(megabytes: int):
        block = bytes(range(256)) * 4096  # 1 MiB

        def body():
            for _ in range(megabytes):
                yield block

        return StreamingResponse(body(), media_type="application/octet-stream")

    @web_app.websocket("/echo")
    async def echo_socket(websocket: WebSocket):
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "bye":
                await websocket.close(code=1000)
                return
            if message.get("text") is not None:
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(message["bytes"][::-1])

    @web_app.post("/form")
    async def form(request: Request):
        data = await request.form()
        return {"fields": dict(data)}

    return web_app


@app.function()
@modal.wsgi_app()
def legacy():
    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"wsgi says {environ['PATH_INFO']}".encode()]

    return wsgi


@app.function(timeout=2)
@modal.fastapi_endpoint()
def slow():
    import time

    time.sleep(30)


@app.cls()
class Model:
    @modal.enter()
    def load(self):
        self.weights = {"bias": 3}

    @modal.fastapi_endpoint()
    def predict(self, x: int = 0):
        return {"prediction": x + self.weights["bias"]}


@app.cls()
class Broken:
    @modal.enter()
    def load(self):
        raise RuntimeError("weights are missing")

    @modal.fastapi_endpoint()
    def predict(self):
        return {"never": True}


WEB_SERVER_PORT = 38765


@app.function()
@modal.web_server(WEB_SERVER_PORT, startup_timeout=20)
def files():
    import pathlib
    import subprocess

    pathlib.Path("/tmp/site").mkdir(exist_ok=True)
    pathlib.Path("/tmp/site/index.html").write_text("<h1>served by a web_server</h1>")
    subprocess.Popen(
        ["python", "-m", "http.server", str(WEB_SERVER_PORT), "--bind", "0.0.0.0", "--directory", "/tmp/site"]
    )
