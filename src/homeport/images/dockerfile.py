"""The Dockerfile instructions the modal client sends, parsed into steps.

Client 1.6.4 sends `dockerfile_commands` one instruction per string for the builder
methods (`pip_install`, `env`, ...), but `from_dockerfile` sends the file split on
newlines: continuation lines, comments and blank lines arrive as separate strings, so
this parser joins them the way Docker does.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

# Instructions Homeport honours. Anything else fails the build, naming it.
SUPPORTED = {
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "WORKDIR",
    "USER",
    "ENTRYPOINT",
    "CMD",
    "SHELL",
    "LABEL",
    "EXPOSE",
}
# Docker instructions Homeport refuses rather than ignore silently.
KNOWN_UNSUPPORTED = {"HEALTHCHECK", "VOLUME", "STOPSIGNAL", "ONBUILD", "MAINTAINER"}

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class DockerfileError(Exception):
    """An instruction Homeport cannot parse or honour; the message names it."""


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # the text after the keyword, continuation lines joined
    source: str  # the instruction as written, for logs and errors
    flags: dict[str, str] = dataclasses.field(default_factory=dict)  # --from=..., --chmod=...

    def exec_form(self) -> list[str] | None:
        """The JSON-array form (`RUN ["a", "b"]`), or None for the shell form."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return None
        return value


def parse(lines: list[str]) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    escape = "\\"
    for number, raw in enumerate(lines):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not pending:
            directive = re.match(r"^#\s*escape\s*=\s*(\S)\s*$", stripped, re.IGNORECASE)
            if directive and not instructions and number == 0:
                escape = directive.group(1)
                continue
            if not stripped or stripped.startswith("#"):
                continue
        elif stripped.startswith("#") or not stripped:
            continue  # comments and blank lines inside a continued instruction are dropped
        if line.rstrip().endswith(escape):
            pending.append(line.rstrip()[: -len(escape)])
            continue
        pending.append(line)
        instructions.append(_instruction(" ".join(part.strip() for part in pending if part.strip())))
        pending = []
    if pending:
        instructions.append(_instruction(" ".join(part.strip() for part in pending if part.strip())))
    return instructions


def _instruction(text: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    if keyword in KNOWN_UNSUPPORTED:
        raise DockerfileError(f"Homeport does not support the Dockerfile instruction {keyword} (`{text}`)")
    if keyword not in SUPPORTED:
        raise DockerfileError(f"unknown Dockerfile instruction {keyword} (`{text}`)")
    flags: dict[str, str] = {}
    rest = rest.strip()
    if keyword in {"COPY", "ADD", "FROM", "RUN"}:
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
    return Instruction(keyword=keyword, arguments=rest, source=text, flags=flags)


def substitute(text: str, variables: dict[str, str]) -> str:
    """Docker's `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alternative}` in ENV,
    WORKDIR, COPY, USER and the like (RUN gets them from its shell instead)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        value = variables.get(name, "")
        if match.group("op") == "-":
            return value or match.group("word")
        if match.group("op") == "+":
            return match.group("word") if value else ""
        return value

    return _VARIABLE.sub(replace, text)


def key_values(instruction: Instruction, variables: dict[str, str]) -> list[tuple[str, str]]:
    """`ENV A=1 B="two words"`, `ENV A 1`, `LABEL`, `ARG A` / `ARG A=default`."""
    text = instruction.arguments
    if instruction.keyword in {"ENV", "LABEL"} and "=" not in text.split(" ")[0]:
        name, _, value = text.partition(" ")
        return [(name, substitute(_unquote(value.strip()), variables))]
    try:
        words = shlex.split(text, posix=True)
    except ValueError as error:
        raise DockerfileError(f"cannot parse `{instruction.source}`: {error}") from None
    pairs = []
    for word in words:
        name, equals, value = word.partition("=")
        if not name:
            raise DockerfileError(f"cannot parse `{instruction.source}`: expected NAME=value")
        pairs.append((name, substitute(value, variables) if equals else ""))
        if not equals and instruction.keyword != "ARG":
            raise DockerfileError(f"cannot parse `{instruction.source}`: expected NAME=value")
    return pairs


def words(instruction: Instruction, variables: dict[str, str]) -> list[str]:
    """COPY/ADD/WORKDIR/USER arguments: the JSON form or shell-like words, variables substituted."""
    exec_form = instruction.exec_form()
    if exec_form is not None:
        return [substitute(word, variables) for word in exec_form]
    try:
        return [substitute(word, variables) for word in shlex.split(instruction.arguments, posix=True)]
    except ValueError as error:
        raise DockerfileError(f"cannot parse `{instruction.source}`: {error}") from None


def _unquote(value: str) -> str:
    try:
        parts = shlex.split(value, posix=True)
    except ValueError:
        return value
    return " ".join(parts)
