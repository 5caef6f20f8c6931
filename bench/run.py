"""Benchmark cgiserve (exec and warm Python, 1 and 2 workers) against twistd web, lighttpd and http.server.

Usage: python3 bench/run.py [--quick] [--duration S] [--rounds N]
                            [--servers a,b] [--markdown PATH]
"""

import argparse
import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import clients
import docroot
import procfs
import report
from procfs import MiB
from servers import COMMANDS, WORKERS, Server, StartError

DEFAULT_SERVERS = ("cgiserve,cgiserve-w2,cgiserve-warm,cgiserve-warm-w2,"
                   "twistd-web,lighttpd,http.server")

# (name, path, expected body, wrk threads, connections)
LOADS = [
    ("static 1 KiB c1", "/static.txt", docroot.STATIC, 1, 1),
    ("static 1 KiB c32", "/static.txt", docroot.STATIC, 2, 32),
    ("C CGI c1", "/cgi-bin/hello-c.cgi", docroot.HELLO, 1, 1),
    ("C CGI c16", "/cgi-bin/hello-c.cgi", docroot.HELLO, 2, 16),
    ("sh CGI c16", "/cgi-bin/hello-sh.cgi", docroot.HELLO, 2, 16),
    ("Python CGI c1", "/cgi-bin/hello-py.cgi", docroot.HELLO, 1, 1),
    ("Python CGI c16", "/cgi-bin/hello-py.cgi", docroot.HELLO, 2, 16),
    ("Python imports c16", "/cgi-bin/imports-py.cgi", docroot.HELLO, 2, 16),
]

MEMORY = "8 sleeping Python CGIs"
MEMORY_PATH, MEMORY_SCRIPTS = "/cgi-bin/sleep-py.cgi", 8

# The targets for warm Python: cgiserve-warm's figure over a
# peer's, (scenario, metric, peer, ">=" or "<=", bound).
WARM_TARGETS = [
    ("Python CGI c1", "p50", "lighttpd", "<=", 0.35),
    ("Python CGI c16", "rps", "lighttpd", ">=", 3.0),
    ("Python imports c16", "rps", "lighttpd", ">=", 8.0),
    (MEMORY, "pss", "cgiserve", "<=", 1.0),
]
# Targets for --workers 2: a two-worker cgiserve's figure over a peer's,
# (scenario, metric, server, peer, ">=" or "<=", bound). At c1 a second
# worker cannot help: its rows must not be slower than one worker's.
WORKER_TARGETS = [
    ("C CGI c16", "rps", "cgiserve-w2", "lighttpd", ">=", 0.85),
    ("sh CGI c16", "rps", "cgiserve-w2", "lighttpd", ">=", 0.9),
    ("static 1 KiB c1", "p50", "cgiserve-w2", "cgiserve", "<=", 1.1),
    ("C CGI c1", "p50", "cgiserve-w2", "cgiserve", "<=", 1.1),
    ("Python CGI c1", "p50", "cgiserve-w2", "cgiserve", "<=", 1.1),
    ("Python CGI c1", "p50", "cgiserve-warm-w2", "cgiserve-warm", "<=", 1.1),
]
# How the warm table labels a metric, and the decimals it shows.
METRICS = {"rps": ("req/s", 0), "p50": ("p50 ms", 2), "pss": ("scripts' PSS MiB", 1)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=4,
                   help="seconds per wrk run (default 4)")
    p.add_argument("--rounds", type=int, default=3,
                   help="wrk runs per server and scenario, the servers taking "
                        "turns; the table shows their median (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one round of 2 s loads, 20 MiB upload, "
                        "2 s download")
    p.add_argument("--servers", default=os.environ.get("BENCH_SERVERS",
                                                       DEFAULT_SERVERS),
                   help=f"comma-separated subset of {DEFAULT_SERVERS} "
                        "(default: $BENCH_SERVERS or all)")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write the report as Markdown to PATH")
    args = p.parse_args()
    args.servers = args.servers.split(",")
    unknown = set(args.servers) - set(COMMANDS)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.quick:
        args.duration, args.rounds = 2, 1
        args.upload_mib, args.download_s = 20, 2
    else:
        args.upload_mib, args.download_s = 200, 8
    return args


def ensure_tools(servers):
    """apt-get install wrk, gcc and (if used) lighttpd when missing."""
    wanted = {"wrk": "wrk", "gcc": "gcc"}
    if any(name.startswith("lighttpd") for name in servers):
        wanted["lighttpd"] = "lighttpd"
    missing = [pkg for cmd, pkg in wanted.items() if not shutil.which(cmd)]
    if missing:
        print(f"installing {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True)


def bench_loads(servers, args, loads):
    """Run every wrk scenario: each server in turn, round after round.

    Taking turns spreads any drift in the machine's speed over all servers
    alike, so the ratios between them hold better than the absolute figures.
    """
    for name, path, expected, threads, conns in LOADS:
        print(f"{name}", flush=True)
        runs = {}
        for server in servers:
            try:
                check(server, path, expected)
                runs[server.name] = []
            except (clients.CheckError, OSError) as e:
                loads[name][server.name] = {"error": str(e)}
        for turn in range(args.rounds):
            # Rotate the order so that no server always runs first.
            for server in servers[turn % len(servers):] + servers[:turn % len(servers)]:
                if server.name not in runs:
                    continue
                try:
                    runs[server.name].append(measured_wrk(
                        server, path, threads, conns, args.duration))
                except (clients.CheckError, subprocess.SubprocessError, OSError) as e:
                    loads[name][server.name] = {"error": str(e)}
                    del runs[server.name]
        for server_name, results in runs.items():
            loads[name][server_name] = median_run(results)


def warm_eligible(path):
    """Whether a warm server should start the script at ``path`` warm."""
    return os.path.basename(path) in docroot.WARM_SCRIPTS


def check(server, path, expected):
    """The scenario check: one GET answered 200 with body ``expected``.

    A warm server must also have started a Python script warm, as its
    access log says; raises CheckError (with the reason it gives) if not.
    """
    offset = server.access_log_size()
    clients.check(server.port, path, expected)
    if not (server.warm and warm_eligible(path)):
        return
    # The record is written once the script has ended, just after the answer.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in server.access_records(offset) if r["uri"] == path]
        if records:
            if records[-1]["warm"] is not True:
                raise clients.CheckError(
                    f"GET {path}: not started warm: {records[-1]['exec_reason']}")
            return
        time.sleep(0.05)
    raise clients.CheckError(f"GET {path}: no record in the access log")


def measured_wrk(server, path, threads, conns, duration):
    """One wrk run, with the server's own CPU time per request and how busy the machine was.

    The server's own CPU time is that of its own processes, summed: twistd
    and, if it is a master, its workers (``cpu_split``: each one's CPU
    seconds, the master's first), not their children (scripts, helpers).
    From a warm server, for a Python script, also how many requests its
    access log says were exec'd (and the commonest reason) and how many
    warm helpers its log says were started meanwhile. Raises OSError if
    one of the server's processes ends meanwhile.
    """
    warm = server.warm and warm_eligible(path)
    access_offset, log_offset = server.access_log_size(), server.log_size()
    pids = server.processes()
    cpu_before = [procfs.cpu_seconds(pid) for pid in pids]
    busy_before, total_before = procfs.machine_times()
    result = clients.wrk(server.port, path, threads, conns, duration)
    busy_after, total_after = procfs.machine_times()
    result["cpu_split"] = [procfs.cpu_seconds(pid) - before
                           for pid, before in zip(pids, cpu_before)]
    cpu = sum(result["cpu_split"])
    result["cpu_us"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
    result["busy"] = (busy_after - busy_before) / max(total_after - total_before, 1)
    if warm:
        result.update(exec_count(server, path, access_offset))
        result["helpers"] = server.helpers_started(log_offset)
    return result


def exec_count(server, path, offset):
    """How many of the scripts logged since ``offset`` were exec'd, and the commonest reason.

    Requests that ran no script (those wrk cut short at its end) do not count.
    """
    records = [r for r in server.access_records(offset)
               if r["uri"] == path and r["script"]]
    reasons = collections.Counter(r["exec_reason"] for r in records
                                  if r["warm"] is not True)
    return {"logged": len(records), "exec": sum(reasons.values()),
            "exec_reason": reasons.most_common(1)[0][0] if reasons else None}


def median_run(results):
    """One row from several wrk runs: medians of rates and latencies, sums of errors."""
    row = {
        "rps": statistics.median(r["rps"] for r in results),
        "p50": statistics.median(r["p50"] for r in results),
        "p99": statistics.median(r["p99"] for r in results),
        "cpu_us": statistics.median(r["cpu_us"] for r in results),
        "busy": statistics.median(r["busy"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "read_errors": sum(r["read_errors"] for r in results),
        "cpu_split": [sum(each) for each in zip(*(r["cpu_split"] for r in results))],
    }
    if "logged" in results[0]:
        row.update({key: sum(r[key] for r in results)
                    for key in ("logged", "exec", "helpers")})
        row["exec_reason"] = next(
            (r["exec_reason"] for r in results if r["exec_reason"]), None)
    return row


def bench_memory(server, memory):
    """Eight concurrent Python CGIs that sleep: their PSS, summed, and the warm helper's.

    From a warm server the scripts are the children of its helper (plus
    any it exec'd); from the others, the server's children.
    """
    print(f"  {MEMORY}", flush=True)
    try:
        memory[server.name] = clients.concurrent(
            server.port, MEMORY_PATH, MEMORY_SCRIPTS, docroot.HELLO,
            lambda: sleeping_memory(server))
    except (clients.CheckError, OSError) as e:
        memory[server.name] = {"error": str(e)}


def sleeping_memory(server, settle=0.3, samples=5, interval=0.1):
    """The memory of the sleeping scripts: the sample with the largest PSS of a few.

    Waits (up to half the scripts' sleep) until all of them run, then
    ``settle`` seconds for the last one to have started up and fallen asleep.
    """
    deadline = time.monotonic() + docroot.SLEEP_SECONDS / 2
    while (len(server.scripts()[0]) < MEMORY_SCRIPTS
           and time.monotonic() < deadline):
        time.sleep(0.02)
    time.sleep(settle)
    found = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        found.append(script_memory(server))
    return max(found, key=lambda m: m["pss"])


def script_memory(server):
    """RSS and PSS of the server's running scripts, summed, and of its warm helpers."""
    helpers = server.warm_helpers()
    scripts, warm = server.scripts()
    found = {"scripts": 0, "warm": 0, "rss": 0, "pss": 0, "private": 0,
             "helpers": len(helpers), "helper_rss": 0, "helper_pss": 0}
    for pid in scripts:
        try:
            m = procfs.memory(pid)
        except OSError:
            continue
        found["scripts"] += 1
        found["warm"] += pid in warm
        for key in ("rss", "pss", "private"):
            found[key] += m[key]
    for pid in helpers:
        try:
            m = procfs.memory(pid)
        except OSError:
            continue
        found["helper_rss"] += m["rss"]
        found["helper_pss"] += m["pss"]
    return found


def bench_bodies(server, args, big):
    """The upload and slow-download scenarios against one server.

    RSS and spooled bytes are those of the server's own processes, summed.
    """
    pids = server.processes()
    mem = big[server.name]
    print(f"  upload {args.upload_mib} MiB", flush=True)
    base = server.rss()
    try:
        with procfs.Sampler(pids) as s:
            elapsed = clients.upload(server.port, "/cgi-bin/hash.cgi",
                                     args.upload_mib * MiB)
        mem.update({"upload s": f"{elapsed:.2f}",
                    "upload peak RSS +": fmt_mib(s.peak_rss - base),
                    "upload spooled": fmt_mib(s.peak_spooled)})
    except (clients.CheckError, OSError) as e:
        mem["upload s"] = f"FAIL: {e}"[:100]

    print(f"  fast download {docroot.BIG_BYTES // MiB} MiB", flush=True)
    try:
        cpu = sum(procfs.cpu_seconds(pid) for pid in pids)
        elapsed = clients.fast_download(server.port, "/cgi-bin/big.cgi",
                                        docroot.BIG_BYTES)
        cpu = sum(procfs.cpu_seconds(pid) for pid in pids) - cpu
        mem.update({"download s": f"{elapsed:.2f}",
                    "download CPU ms/MiB": f"{cpu * 1000 / (docroot.BIG_BYTES / MiB):.2f}"})
    except (clients.CheckError, OSError) as e:
        mem["download s"] = f"FAIL: {e}"[:100]

    print(f"  slow download for {args.download_s} s", flush=True)
    base = server.rss()
    wrote = {}

    def on_end():
        wrote["bytes"] = procfs.written(server.scripts()[0])

    try:
        with procfs.Sampler(pids) as s:
            got = clients.slow_download(server.port, "/cgi-bin/big.cgi",
                                        MiB, args.download_s, on_end)
        mem.update({"download ahead": fmt_mib(wrote["bytes"] - got),
                    "download peak RSS +": fmt_mib(s.peak_rss - base),
                    "CGI gone 5 s after close": cgi_gone(server)})
    except (clients.CheckError, OSError) as e:
        mem["download ahead"] = f"FAIL: {e}"[:100]
    mem["RSS after"] = fmt_mib(server.rss())


def cgi_gone(server, timeout=5):
    """Whether the server's scripts all exit within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.scripts()[0]:
            return "yes"
        time.sleep(0.1)
    return "no"


def fmt_mib(n):
    return f"{n / MiB:.1f} MiB"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else ""


def load_note(r):
    """The note column: socket read errors, a master's CPU split, a warm server's exec'd requests."""
    notes = []
    if r["read_errors"]:
        notes.append(f"{r['read_errors']} socket read errors")
    if len(r["cpu_split"]) > 1:
        master, *workers = (f"{c / (sum(r['cpu_split']) or 1):.0%}" for c in r["cpu_split"])
        notes.append(f"CPU: master {master}, workers {' '.join(workers)}")
    if "logged" in r:
        notes.append(f"{r['exec']} of {r['logged']} exec'd"
                     + (f" ({r['exec_reason']})" if r["exec"] else ""))
        notes.append(f"helpers started: {r['helpers']}")
    return "; ".join(notes)


def load_table(loads):
    rows = []
    for name, *_ in LOADS:
        ref = loads[name].get("cgiserve", {})
        for server, r in loads[name].items():
            if "error" in r:
                rows.append([name, server, "", "", "", "", "", "", "", "",
                             f"FAIL: {r['error']}"[:100]])
                continue
            peer = server != "cgiserve"
            rows.append([
                name, server, f"{r['rps']:.0f}", f"{r['p50']:.2f}",
                f"{r['p99']:.2f}", r["errors"],
                f"{r['cpu_us']:.0f}", f"{r['busy']:.0%}",
                ratio(ref.get("rps"), r["rps"]) if peer else "",
                ratio(ref.get("p50"), r["p50"]) if peer else "",
                load_note(r)])
    return report.table(
        ["scenario", "server", "req/s", "p50 ms", "p99 ms", "errors",
         "server CPU us/req", "machine busy", "req/s cgiserve/peer", "p50 cgiserve/peer", "note"], rows)


def memory_table(memory):
    """The sleeping scripts' memory per server; a warm server's helper beside it."""
    rows = []
    for server, m in memory.items():
        if "error" in m:
            rows.append([server] + [""] * 8 + [f"FAIL: {m['error']}"[:100]])
            continue
        helper = bool(m["helpers"])
        each = max(m["scripts"], 1)
        rows.append([
            server, f"{m['scripts']}" + (f" ({m['warm']} warm)" if helper else ""),
            fmt_mib(m["pss"]), fmt_mib(m["pss"] / each),
            fmt_mib(m["private"] / each), fmt_mib(m["rss"]),
            fmt_mib(m["helper_rss"]) if helper else "",
            fmt_mib(m["helper_pss"]) if helper else "",
            fmt_mib(m["pss"] + m["helper_pss"]) if helper else "",
            helpers_note(m["helpers"], WORKERS.get(server) or 1)])
    return report.table(
        ["server", "scripts running", "scripts' PSS", "PSS per script",
         "private per script", "scripts' RSS", "helper RSS", "helper PSS",
         "scripts + helper PSS", "note"], rows)


def helpers_note(helpers, workers):
    """How many helpers there were, if more than one: one per worker, or more while one is replaced."""
    if helpers <= 1:
        return ""
    return f"{helpers} helpers" + (", one per worker" if helpers == workers else "")


def idle_memory(server):
    """RSS and PSS of the server's own processes (twistd first, then its workers), and its helpers' PSS."""
    try:
        helpers = [procfs.memory(pid)["pss"] for pid in server.warm_helpers()]
        return {"processes": [procfs.memory(pid) for pid in server.processes()],
                "helpers": len(helpers), "helper_pss": sum(helpers)}
    except OSError as e:
        return {"error": str(e)}


def idle_table(idle):
    """Idle memory per cgiserve: the master's (or the one process's), each worker's, and their sums."""
    rows = []
    for server, m in idle.items():
        if "error" in m:
            rows.append([server] + [""] * 8 + [f"FAIL: {m['error']}"[:100]])
            continue
        master, *workers = m["processes"]

        def each(key):
            return " + ".join(fmt_mib(w[key]) for w in workers) or "none: one process serves"

        rows.append([
            server, WORKERS[server], fmt_mib(master["rss"]), fmt_mib(master["pss"]),
            each("rss"), each("pss"),
            fmt_mib(sum(p["rss"] for p in m["processes"])),
            fmt_mib(sum(p["pss"] for p in m["processes"])),
            fmt_mib(m["helper_pss"]) if m["helpers"] else "",
            helpers_note(m["helpers"], WORKERS[server])])
    return report.table(
        ["server", "--workers", "master RSS", "master PSS", "each worker's RSS",
         "each worker's PSS", "RSS sum", "PSS sum", "warm helpers' PSS (not in sums)",
         "note"], rows)


def warm_figures(loads, memory):
    """{(scenario, metric): {server: value}} for the warm Python table."""
    figures = {}
    for name, path, *_ in LOADS:
        if warm_eligible(path):
            for metric in ("rps", "p50"):
                figures[name, metric] = {server: r[metric] for server, r
                                         in loads[name].items() if metric in r}
    figures[MEMORY, "pss"] = {server: m["pss"] / MiB for server, m
                              in memory.items() if "pss" in m}
    return figures


def target_met(value, op, bound):
    if value is None:
        return "n/a"
    return "met" if (value >= bound if op == ">=" else value <= bound) else "not met"


def warm_table(loads, memory):
    """Warm against exec'd Python: cgiserve-warm over lighttpd and over cgiserve, and the targets."""
    targets = {(scenario, metric): (peer, op, bound)
               for scenario, metric, peer, op, bound in WARM_TARGETS}
    rows = []
    for (scenario, metric), values in warm_figures(loads, memory).items():
        warm = values.get("cgiserve-warm")
        over = {peer: warm / values[peer] if warm and values.get(peer) else None
                for peer in ("lighttpd", "cgiserve")}
        target = met = ""
        if (scenario, metric) in targets:
            peer, op, bound = targets[scenario, metric]
            target = f"warm/{peer} {op} {bound:g}"
            met = target_met(over[peer], op, bound)
        digits = METRICS[metric][1]
        rows.append([scenario, METRICS[metric][0]]
                    + [f"{values[s]:.{digits}f}" if s in values else ""
                       for s in ("cgiserve-warm", "cgiserve", "lighttpd")]
                    + [f"{over[p]:.2f}" if over[p] else "" for p in over]
                    + [target, met])
    return report.table(
        ["scenario", "metric", "cgiserve-warm", "cgiserve", "lighttpd",
         "warm/lighttpd", "warm/cgiserve", "target", "met"], rows)


def workers_table(loads):
    """Two workers against one and against lighttpd: the targets, met or not."""
    rows = []
    for scenario, metric, server, peer, op, bound in WORKER_TARGETS:
        values = [loads[scenario].get(s, {}).get(metric) for s in (server, peer)]
        over = values[0] / values[1] if all(values) else None
        digits = METRICS[metric][1]
        rows.append([scenario, METRICS[metric][0], server, peer]
                    + [f"{v:.{digits}f}" if v else "" for v in values]
                    + [f"{over:.2f}" if over else "",
                       f"server/peer {op} {bound:g}", target_met(over, op, bound)])
    return report.table(
        ["scenario", "metric", "server", "peer", "server's", "peer's",
         "server/peer", "target", "met"], rows)


def workers_line(names):
    """The Machine section's line saying how many workers each cgiserve ran with."""
    runs = ", ".join(f"{name} {WORKERS[name]}" for name in names if name in WORKERS)
    return (f"- cgiserve's --workers: {runs} (1: one process serves; more: a master "
            "and that many workers, whose CPU and RSS the tables sum)\n" if runs else "")


def big_table(big, args):
    cols = ["idle RSS", "upload s", "upload peak RSS +", "upload spooled",
            "download s", "download CPU ms/MiB", "download ahead", "download peak RSS +",
            "CGI gone 5 s after close", "RSS after"]
    rows = [[server] + [m.get(c, "") for c in cols] for server, m in big.items()]
    cols[1] = f"upload {args.upload_mib} MiB s"
    cols[4] = f"download {docroot.BIG_BYTES // MiB} MiB s"
    cols[6] = f"script ahead of 1 MiB/s client after {args.download_s} s"
    return report.table(["server"] + cols, rows)


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    ensure_tools(args.servers)
    loads = {name: {} for name, *_ in LOADS}
    big, memory, idle = {}, {}, {}
    workdir = tempfile.mkdtemp(prefix="cgiserve-bench-")
    try:
        os.chmod(workdir, 0o755)
        root = os.path.join(workdir, "root")
        os.mkdir(root)
        docroot.build(root)
        servers = []
        try:
            for name in args.servers:
                server = Server(name, root, workdir)
                servers.append(server)
            running = []
            for server in servers:
                try:
                    server.wait_ready()
                    running.append(server)
                except StartError as e:
                    print(f"{server.name}: skipped, did not start: {e}", flush=True)
                    for scenario in loads.values():
                        scenario[server.name] = {"error": f"did not start: {e}"}
                    big[server.name] = {"idle RSS": "did not start"}
                    memory[server.name] = {"error": f"did not start: {e}"}
                    if server.workers:
                        idle[server.name] = {"error": f"did not start: {e}"}
            time.sleep(1)
            for server in running:
                big[server.name] = {"idle RSS": fmt_mib(server.rss())}
                if server.workers:
                    idle[server.name] = idle_memory(server)
            bench_loads(running, args, loads)
            for server in running:
                print(f"{server.name}:", flush=True)
                bench_memory(server, memory)
                bench_bodies(server, args, big)
        finally:
            for server in servers:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    facts = "\n".join(f"- {k}: {v}" for k, v in report.machine_facts())
    text = (f"## Machine\n\n{facts}\n"
            f"- wrk: {args.rounds} rounds of {args.duration} s per server "
            f"and scenario, servers taking turns; medians shown\n"
            f"{workers_line(args.servers)}"
            f"- total bench time: {time.monotonic() - started:.0f} s\n"
            f"- 1-minute load average: {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after\n\n"
            f"## Request load (wrk)\n\n{load_table(loads)}\n\n"
            f"## {MEMORY}\n\n{memory_table(memory)}\n\n"
            f"## Warm Python: targets\n\n{warm_table(loads, memory)}\n\n"
            f"## Workers: targets\n\n{workers_table(loads)}\n\n"
            f"## Idle memory: master + workers\n\n{idle_table(idle)}\n\n"
            f"## Large bodies and memory\n\n{big_table(big, args)}\n")
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# cgiserve benchmark\n\n" + text)


if __name__ == "__main__":
    main()
