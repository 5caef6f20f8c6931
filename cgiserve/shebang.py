# -*- test-case-name: tests.test_shebang -*-
"""Pure: a script's first bytes -> the interpreter the kernel would run it with (Linux binfmt_script), and how."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The kernel reads this much of a file to find its #! line (BINPRM_BUF_SIZE).
HEAD_BYTES = 256

_BLANKS = b" \t"


@dataclass(frozen=True)
class Interpreter:
    """
    What runs a script: C{program}, the path that is executed, seen by
    itself as C{argv0}, with C{options} between it and the script.
    C{search} is set instead of C{program} for C{#!/usr/bin/env NAME}:
    the name that C{launcher} (the env program) looks up on the script's
    PATH.
    """

    program: str | None
    argv0: str
    options: tuple[str, ...] = ()
    search: str | None = None
    launcher: str | None = None


def shebang(head: bytes) -> tuple[bytes, bytes | None] | None:
    """
    The interpreter and the optional single argument of a C{#!} line, as
    Linux's binfmt_script splits it (the argument is the rest of the line,
    blanks and all); None when there is no complete C{#!} line.
    """
    if not head.startswith(b"#!"):
        return None
    line, newline, _ = head[2:].partition(b"\n")
    if not newline:
        return None
    line = line.strip(_BLANKS)
    for index, byte in enumerate(line):
        if byte in _BLANKS:
            return line[:index], line[index:].strip(_BLANKS) or None
    return (line, None) if line else None


def interpreter_for(head: bytes, mapped: str | None = None) -> Interpreter | None:
    """
    How a script is run: by its C{--interpreter} mapping if it has one,
    else by its C{#!} line, with C{/usr/bin/env NAME} (a plain name, no
    options) left for a PATH search; None when it has neither.
    """
    if mapped is not None:
        return Interpreter(mapped, mapped)
    parsed = shebang(head)
    if parsed is None:
        return None
    program, argument = os.fsdecode(parsed[0]), parsed[1]
    if os.path.basename(program) == "env" and argument is not None:
        name = os.fsdecode(argument)
        if not (name.startswith("-") or "=" in name or any(blank in name for blank in " \t")):
            if "/" in name:
                # env runs a name with a slash as it is, without a search.
                return Interpreter(name, name, launcher=program)
            return Interpreter(None, name, search=name, launcher=program)
    return Interpreter(program, program, () if argument is None else (os.fsdecode(argument),))
