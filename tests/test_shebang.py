"""Tests for cgiserve.shebang: #! lines split as Linux splits them, and the interpreter a script runs with."""

from __future__ import annotations

import pytest

from cgiserve.shebang import Interpreter, interpreter_for, shebang


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"#!/usr/bin/python3\nprint(1)\n", (b"/usr/bin/python3", None)),
        (b"#! /usr/bin/python3 \n", (b"/usr/bin/python3", None)),
        (b"#!/usr/bin/python3\r\n", (b"/usr/bin/python3\r", None)),
        (b"#!/usr/bin/python3 -u\n", (b"/usr/bin/python3", b"-u")),
        (b"#!/usr/bin/python3\t-u -B \n", (b"/usr/bin/python3", b"-u -B")),
        (b"#!/usr/bin/env python3\n", (b"/usr/bin/env", b"python3")),
        (b"#!/usr/bin/env -S python3 -u\n", (b"/usr/bin/env", b"-S python3 -u")),
        # No #!, an empty one, or one that does not end within the head.
        (b"print(1)\n", None),
        (b"#!\n", None),
        (b"#!   \n", None),
        (b"#!/usr/bin/python3", None),
        (b"", None),
    ],
)
def test_shebang_splits_as_the_kernel_does(head, parsed):
    """A #! line is an interpreter and at most one argument: the rest of the line, stripped of blanks."""
    assert shebang(head) == parsed


@pytest.mark.parametrize(
    ("head", "mapped", "interpreter"),
    [
        (b"#!/usr/bin/python3\n", None, Interpreter("/usr/bin/python3", "/usr/bin/python3")),
        (b"#!/usr/bin/python3 -u\n", None, Interpreter("/usr/bin/python3", "/usr/bin/python3", ("-u",))),
        (b"#!/usr/bin/env python3\n", None, Interpreter(None, "python3", search="python3", launcher="/usr/bin/env")),
        (b"#!/bin/env python3.11\n", None, Interpreter(None, "python3.11", search="python3.11", launcher="/bin/env")),
        (
            b"#!/usr/bin/env /opt/py/bin/python3\n",
            None,
            Interpreter("/opt/py/bin/python3", "/opt/py/bin/python3", launcher="/usr/bin/env"),
        ),
        # env with options or assignments is env running something else: not a search.
        (b"#!/usr/bin/env -S python3 -u\n", None, Interpreter("/usr/bin/env", "/usr/bin/env", ("-S python3 -u",))),
        (b"#!/usr/bin/env PYTHONPATH=x python3\n", None, Interpreter("/usr/bin/env", "/usr/bin/env", ("PYTHONPATH=x python3",))),
        (b"#!/usr/bin/env\n", None, Interpreter("/usr/bin/env", "/usr/bin/env")),
        # A mapping wins over the #! line, and needs none.
        (b"#!/usr/bin/perl\n", "/usr/bin/python3.11", Interpreter("/usr/bin/python3.11", "/usr/bin/python3.11")),
        (b"print(1)\n", "/usr/bin/python3.11", Interpreter("/usr/bin/python3.11", "/usr/bin/python3.11")),
        (b"print(1)\n", None, None),
    ],
)
def test_interpreter_for(head, mapped, interpreter):
    """A script runs with its mapping, else its #! interpreter (env NAME left for a PATH search), else with nothing."""
    assert interpreter_for(head, mapped) == interpreter
