"""The floor under any CGI server here: start the C CGI, read its answer, reap it.

Usage: python3 bench/spawn_floor.py [--count N]

No server, no event loop: cgiserve's own posix_spawn (own session and
directory, closefrom, default signals) in a loop, one child at a time, as
at concurrency 1. Prints the median and 90th percentile of the time
posix_spawn blocks its caller (until the kernel has the child at its exec)
and of the time from then until the child's output arrives.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))

from cgiserve import spawn  # noqa: E402


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run_once(executable, directory, env):
    """Spawn, read the output to its end, reap; return the two intervals in microseconds."""
    read_end, write_end = os.pipe()
    try:
        started = time.perf_counter_ns()
        pid = spawn.posix_spawn(executable, [executable], env, {0: spawn._devnull(), 1: write_end, 2: write_end},
                                directory)
        spawned = time.perf_counter_ns()
        os.close(write_end)
        write_end = None
        os.read(read_end, 4096)
        answered = time.perf_counter_ns()
        while os.read(read_end, 4096):
            pass
        os.waitpid(pid, 0)
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
    return (spawned - started) / 1000, (answered - spawned) / 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=2000, help="children to start (default 2000)")
    args = p.parse_args()
    if spawn._libc is None:
        sys.exit("needs glibc's posix_spawn extensions")
    with tempfile.TemporaryDirectory(prefix="cgiserve-floor-") as directory:
        executable = os.path.join(directory, "hello-c.cgi")
        subprocess.run(["gcc", "-O2", "-o", executable, os.path.join(BENCH, "hello.c")], check=True)
        # About as many variables as a CGI environment has.
        env = [f"VARIABLE_{i}=value".encode() for i in range(25)]
        for _ in range(100):
            run_once(os.fsencode(executable), os.fsencode(directory), env)
        runs = [run_once(os.fsencode(executable), os.fsencode(directory), env) for _ in range(args.count)]
    for index, what in enumerate(["posix_spawn blocks the caller", "then until the output arrives"]):
        values = [run[index] for run in runs]
        print(f"{what:32s} p50 {percentile(values, 0.5):5.0f} us   p90 {percentile(values, 0.9):5.0f} us")


if __name__ == "__main__":
    main()
