"""Machine facts and Markdown tables for the benchmark results."""

import datetime
import importlib.metadata
import os
import platform
import subprocess


def _first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0]


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_facts():
    """(label, value) pairs describing the machine and software versions."""
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc)
         .strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", _cpu_model()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("Twisted", importlib.metadata.version("twisted")),
        ("lighttpd", _first_line(["lighttpd", "-v"])),
        ("wrk", _first_line(["wrk", "-v"]).split(" Copyright")[0]),
    ]


def table(headers, rows):
    """A Markdown pipe table with columns padded for reading as plain text."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in cells[1:]])
