"""A test app with a class: lifecycle hooks, methods and parameters."""

import os

import modal

app = modal.App("classes")


@app.cls()
class Counter:
    start: int = modal.parameter(default=0)

    @modal.enter()
    def setup(self):
        self.value = self.start
        self.pid = os.getpid()
        print(f"enter with start={self.start}")

    @modal.method()
    def increment(self, by: int = 1):
        self.value += by
        return self.value

    @modal.method()
    def whoami(self):
        return self.pid

    @modal.exit()
    def teardown(self):
        print(f"exit with value={self.value}")


@app.local_entrypoint()
def main():
    c = Counter(start=10)
    print("first", c.increment.remote())
    print("second", c.increment.remote(5))
    print("default", Counter().increment.remote())
