"""Object ids. Every id Homeport hands out is made here, with Modal's prefixes.

The client checks some prefixes (e.g. `fu-` for functions, `fc-` for function
calls, `im-` for images), so ids keep Modal's shape: `<prefix>-<random>`.
"""

from __future__ import annotations

import secrets
import string

PREFIXES = {
    "app": "ap",
    "function": "fu",
    "class": "cs",
    "function_call": "fc",
    "input": "in",
    "task": "ta",
    "image": "im",
    "mount": "mo",
    "blob": "bl",
    "workspace": "ac",
    "environment": "en",
    "token": "ak",
    "token_secret": "as",
    "container_secret": "ct",
    "secret": "st",
    "dict": "di",
    "queue": "qu",
    "volume": "vo",
    "request": "rq",
    "sandbox": "sb",
}


_ALPHANUMERIC = string.ascii_letters + string.digits
_TASK_ALPHABET = string.ascii_uppercase + string.digits


def new_id(kind: str) -> str:
    # The CLI tells an app id from an app name by `^ap-[a-zA-Z0-9]{22}$`, and client
    # tracebacks recognise task ids as `ta-[0-9A-Z]{26}`; no other dashes are allowed.
    if kind == "task":
        # Never ending in "V": client 1.6.4 takes such a task for a V2 sandbox's
        # (`_is_v2_task_id`) and would send `modal container exec` on it the sandbox way.
        last = secrets.choice(_TASK_ALPHABET.replace("V", ""))
        return "ta-" + _encode(secrets.randbits(130), _TASK_ALPHABET, 25) + last
    return f"{PREFIXES[kind]}-" + _encode(secrets.randbits(143), _ALPHANUMERIC, _length(kind))


def _length(kind: str) -> int:
    # Client 1.6.4 takes `sb-` + exactly 22 alphanumerics for a V1 sandbox and sends
    # from_id/list/from_name of such ids to the V1 RPCs; any other shape to the V2 ones.
    return 24 if kind == "sandbox" else 22


def new_v1_sandbox_id() -> str:
    """A sandbox the client made through the V1 RPCs (it does for gpu= and pty=True)."""
    return "sb-" + _encode(secrets.randbits(131), _ALPHANUMERIC, 22)


def new_sandbox_task_id() -> str:
    """A V2 sandbox's task id ends in "V" (client `_is_v2_task_id`, which the CLI uses)."""
    return new_id("task")[:-1] + "V"


def is_id(kind: str, value: str) -> bool:
    """Whether a value has the shape of an id of this kind (what `new_id` makes)."""
    if kind == "task":
        return len(value) == 29 and value.startswith("ta-") and all(c in _TASK_ALPHABET for c in value[3:])
    prefix = PREFIXES[kind] + "-"
    lengths = (22, 24) if kind == "sandbox" else (_length(kind),)  # V1 and V2 sandboxes
    return (
        len(value) - len(prefix) in lengths
        and value.startswith(prefix)
        and value[len(prefix) :].isalnum()
        and value.isascii()
    )


def _encode(number: int, alphabet: str, length: int) -> str:
    base = len(alphabet)
    characters = []
    for _ in range(length):
        number, digit = divmod(number, base)
        characters.append(alphabet[digit])
    return "".join(characters)


def new_secret() -> str:
    return secrets.token_urlsafe(24)
