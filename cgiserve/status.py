# -*- test-case-name: tests.test_metrics -*-
"""The status page (C{--metrics}'s /status): its data as plain values, rendered as HTML or JSON."""

from __future__ import annotations

import html
import json
import os

from cgiserve.addresses import client_end

# How often the page reloads itself in the operator's browser.
REFRESH_SECONDS = 5

# The metric samples the page's totals are read from.
_REQUESTS = "cgiserve_requests_total"
_RUNS = "cgiserve_script_runs_total"
_BYTES_IN = "cgiserve_request_body_bytes_total"
_BYTES_OUT = "cgiserve_response_body_bytes_total"
_RUNNING = "cgiserve_scripts_running"
_QUEUED = "cgiserve_requests_queued"
_SLOTS = "cgiserve_script_slots"


def script_name(script: str, root: str) -> str:
    """A script's path as the status page and the per-script label give it: below the root, from its C{/}."""
    if script.startswith(root + os.sep):
        return script[len(root) :]
    return script


def running_rows(runs, now: float, root: str) -> list[dict]:
    """
    A row of plain values for each script run (a L{ScriptProtocol}) in
    C{runs}: its script below the root, request id, client address,
    method and path (never the query string, arguments or headers), the
    process (group) id, seconds it has run, and body bytes in and out.
    """
    rows = []
    for run in runs:
        request = getattr(run.sink, "request", None)
        if request is None:
            continue
        started = run.started_at
        rows.append(
            {
                "script": script_name(run.script, root),
                "request_id": run.request_id,
                "client": client_end(request.getClientAddress())[0],
                "method": (request.method or b"").decode("ascii", "backslashreplace"),
                "path": (request.path or b"").decode("utf-8", "backslashreplace"),
                "pid": run.pgid,
                "running_seconds": 0.0 if started is None else round(max(now - started, 0.0), 3),
                "bytes_in": request.body_received,
                "bytes_out": request.sentLength,
            }
        )
    return rows


def _totals(snapshots, name: str, label: str | None = None):
    """The sum of the samples called C{name} over every snapshot's families; by C{label}'s values if given."""
    total = 0
    by: dict[str, float] = {}
    for _, snapshot in snapshots:
        for _family, _kind, _help, _unit, samples in snapshot["families"]:
            for sample, labels, value in samples:
                if sample != name:
                    continue
                total += value
                if label is not None:
                    by[labels[label]] = by.get(labels[label], 0) + value
    if label is None:
        return int(total)
    return int(total), {key: int(by[key]) for key in sorted(by)}


def status_data(now: float, started: float, snapshots, workers=None) -> dict:
    """
    The status page's data from the snapshots of the processes that
    serve (C{(worker number or None, snapshot)} pairs): uptime, totals,
    slots, queue and the scripts running now, longest first; with
    C{workers}, a list of them (number, pid, whether it answered).
    """
    requests, by_status = _totals(snapshots, _REQUESTS, "status")
    runs, by_outcome = _totals(snapshots, _RUNS, "outcome")
    running = []
    for number, snapshot in snapshots:
        for row in snapshot["running"]:
            running.append(row if number is None else {"worker": number, **row})
    running.sort(key=lambda row: -row["running_seconds"])
    data = {
        "uptime_seconds": round(max(now - started, 0.0), 3),
        "requests": requests,
        "requests_by_status": by_status,
        "script_runs": runs,
        "script_runs_by_outcome": by_outcome,
        "request_body_bytes": _totals(snapshots, _BYTES_IN),
        "response_body_bytes": _totals(snapshots, _BYTES_OUT),
        "script_slots": _totals(snapshots, _SLOTS),
        "scripts_running": _totals(snapshots, _RUNNING),
        "requests_queued": _totals(snapshots, _QUEUED),
        "running": running,
    }
    if workers is not None:
        data["workers"] = workers
    return data


def render_json(data: dict) -> bytes:
    """The status data as JSON."""
    return json.dumps(data, indent=1).encode("utf-8") + b"\n"


def duration(seconds: float) -> str:
    """A duration as an operator reads it: C{2 d 3 h}, C{4 min 5 s}, C{1.25 s}."""
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{value} {unit}" for value, unit in parts if value]
    return " ".join(shown[:2])


def _breakdown(by: dict) -> str:
    return ", ".join(f"{key}: {value}" for key, value in by.items() if value)


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "th{background:#f0f0f0}"
)

_COLUMNS = (
    ("script", "Script", False),
    ("request_id", "Request id", False),
    ("client", "Client", False),
    ("request", "Request", False),
    ("pid", "PID", True),
    ("running", "Running for", True),
    ("bytes_in", "Bytes in", True),
    ("bytes_out", "Bytes out", True),
)


def render_html(data: dict, refresh_seconds: int = REFRESH_SECONDS) -> bytes:
    """The status page: every value from the data is escaped."""
    e = html.escape
    workers = data.get("workers")
    summary = [
        ("Up", duration(data["uptime_seconds"])),
        ("Requests", f"{data['requests']} ({_breakdown(data['requests_by_status'])})" if data["requests"] else "0"),
        ("Script runs", f"{data['script_runs']} ({_breakdown(data['script_runs_by_outcome'])})" if data["script_runs"] else "0"),
        ("Script slots in use", f"{data['scripts_running']} of {data['script_slots']}"),
        ("Requests queued", str(data["requests_queued"])),
        ("Body bytes in, out", f"{data['request_body_bytes']}, {data['response_body_bytes']}"),
    ]
    if workers is not None:
        summary.append(("Workers", str(len(workers))))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">',
        f"<title>cgiserve status</title><style>{_STYLE}</style></head><body>",
        "<h1>cgiserve status</h1>",
        f'<p>Refreshed every {int(refresh_seconds)} s. <a href="?format=json">JSON</a>, <a href="metrics">metrics</a>.</p>',
        '<table id="summary">',
    ]
    out += [f"<tr><th>{e(name)}</th><td>{e(value)}</td></tr>" for name, value in summary]
    out.append("</table>")
    running = data["running"]
    columns = (("worker", "Worker", True), *_COLUMNS) if workers is not None else _COLUMNS
    out.append(f"<h2>Scripts running now: {len(running)}</h2>")
    out.append('<table id="running"><thead><tr>')
    out += [f"<th>{e(title)}</th>" for _, title, _ in columns]
    out.append("</tr></thead><tbody>")
    for row in running:
        values = {
            **row,
            "request": f"{row['method']} {row['path']}",
            "running": duration(row["running_seconds"]),
            "pid": "" if row["pid"] is None else row["pid"],
        }
        out.append("<tr>")
        out += [f'<td{" class=n" if numeric else ""}>{e(str(values[key]))}</td>' for key, _, numeric in columns]
        out.append("</tr>")
    out.append("</tbody></table>")
    if workers is not None:
        out.append('<h2>Workers</h2><table id="workers"><thead><tr>')
        out.append("<th>Worker</th><th>PID</th><th>Answered</th></tr></thead><tbody>")
        for worker in workers:
            answered = "yes" if worker["answered"] else "no (left out of the totals)"
            out.append(
                f'<tr><td class=n>{e(str(worker["worker"]))}</td><td class=n>{e(str(worker["pid"]))}</td>'
                f"<td>{e(answered)}</td></tr>"
            )
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out).encode("utf-8") + b"\n"
