"""Benchmark cgiserve against twistd web, lighttpd and http.server.

Usage: python3 bench/run.py [--quick] [--duration S] [--rounds N]
                            [--servers a,b] [--markdown PATH]
"""

import argparse
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
from servers import COMMANDS, Server, StartError

DEFAULT_SERVERS = "cgiserve,twistd-web,lighttpd,http.server"

# (name, path, expected body, wrk threads, connections)
LOADS = [
    ("static 1 KiB c1", "/static.txt", docroot.STATIC, 1, 1),
    ("static 1 KiB c32", "/static.txt", docroot.STATIC, 2, 32),
    ("C CGI c1", "/cgi-bin/hello-c.cgi", docroot.HELLO, 1, 1),
    ("C CGI c16", "/cgi-bin/hello-c.cgi", docroot.HELLO, 2, 16),
    ("sh CGI c16", "/cgi-bin/hello-sh.cgi", docroot.HELLO, 2, 16),
    ("Python CGI c16", "/cgi-bin/hello-py.cgi", docroot.HELLO, 2, 16),
]


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
    if "lighttpd" in servers:
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
                clients.check(server.port, path, expected)
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
                except (clients.CheckError, subprocess.SubprocessError) as e:
                    loads[name][server.name] = {"error": str(e)}
                    del runs[server.name]
        for server_name, results in runs.items():
            loads[name][server_name] = median_run(results)


def measured_wrk(server, path, threads, conns, duration):
    """One wrk run, with the server's own CPU time per request and how busy the machine was."""
    cpu_before = procfs.cpu_seconds(server.pid)
    busy_before, total_before = procfs.machine_times()
    result = clients.wrk(server.port, path, threads, conns, duration)
    busy_after, total_after = procfs.machine_times()
    cpu = procfs.cpu_seconds(server.pid) - cpu_before
    result["cpu_us"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
    result["busy"] = (busy_after - busy_before) / max(total_after - total_before, 1)
    return result


def median_run(results):
    """One row from several wrk runs: medians of rates and latencies, sums of errors."""
    return {
        "rps": statistics.median(r["rps"] for r in results),
        "p50": statistics.median(r["p50"] for r in results),
        "p99": statistics.median(r["p99"] for r in results),
        "cpu_us": statistics.median(r["cpu_us"] for r in results),
        "busy": statistics.median(r["busy"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "read_errors": sum(r["read_errors"] for r in results),
    }


def bench_bodies(server, args, big):
    """The upload and slow-download scenarios against one server."""
    pid = server.pid
    mem = big[server.name]
    print(f"  upload {args.upload_mib} MiB", flush=True)
    base = procfs.rss(pid)
    try:
        with procfs.Sampler(pid) as s:
            elapsed = clients.upload(server.port, "/cgi-bin/hash.cgi",
                                     args.upload_mib * MiB)
        mem.update({"upload s": f"{elapsed:.2f}",
                    "upload peak RSS +": fmt_mib(s.peak_rss - base),
                    "upload spooled": fmt_mib(s.peak_spooled)})
    except (clients.CheckError, OSError) as e:
        mem["upload s"] = f"FAIL: {e}"[:100]

    print(f"  slow download for {args.download_s} s", flush=True)
    base = procfs.rss(pid)
    wrote = {}

    def on_end():
        wrote["bytes"] = procfs.written(procfs.descendants(pid))

    try:
        with procfs.Sampler(pid) as s:
            got = clients.slow_download(server.port, "/cgi-bin/big.cgi",
                                        MiB, args.download_s, on_end)
        mem.update({"download ahead": fmt_mib(wrote["bytes"] - got),
                    "download peak RSS +": fmt_mib(s.peak_rss - base),
                    "CGI gone 5 s after close": cgi_gone(pid)})
    except (clients.CheckError, OSError) as e:
        mem["download ahead"] = f"FAIL: {e}"[:100]
    mem["RSS after"] = fmt_mib(procfs.rss(pid))


def cgi_gone(pid, timeout=5):
    """Whether the server's children all exit within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procfs.descendants(pid):
            return "yes"
        time.sleep(0.1)
    return "no"


def fmt_mib(n):
    return f"{n / MiB:.1f} MiB"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else ""


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
                f"{r['read_errors']} socket read errors" if r["read_errors"] else ""])
    return report.table(
        ["scenario", "server", "req/s", "p50 ms", "p99 ms", "errors",
         "server CPU us/req", "machine busy", "req/s cgiserve/peer", "p50 cgiserve/peer", "note"], rows)


def big_table(big, args):
    cols = ["idle RSS", "upload s", "upload peak RSS +", "upload spooled",
            "download ahead", "download peak RSS +",
            "CGI gone 5 s after close", "RSS after"]
    rows = [[server] + [m.get(c, "") for c in cols] for server, m in big.items()]
    cols[1] = f"upload {args.upload_mib} MiB s"
    cols[4] = f"script ahead of 1 MiB/s client after {args.download_s} s"
    return report.table(["server"] + cols, rows)


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    ensure_tools(args.servers)
    loads = {name: {} for name, *_ in LOADS}
    big = {}
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
            time.sleep(1)
            for server in running:
                big[server.name] = {"idle RSS": fmt_mib(procfs.rss(server.pid))}
            bench_loads(running, args, loads)
            for server in running:
                print(f"{server.name}:", flush=True)
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
            f"- total bench time: {time.monotonic() - started:.0f} s\n"
            f"- 1-minute load average: {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after\n\n"
            f"## Request load (wrk)\n\n{load_table(loads)}\n\n"
            f"## Large bodies and memory\n\n{big_table(big, args)}\n")
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# cgiserve benchmark\n\n" + text)


if __name__ == "__main__":
    main()
