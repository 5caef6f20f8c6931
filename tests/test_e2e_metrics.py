"""End to end: --metrics, its /metrics scraped after a known mix of requests, and its /status page, alone and with --workers 2."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgiserve.config import default_max_scripts
from tests import procfs
from tests.conftest import sh, write_script
from tests.http import Connection, request, wait_for
from tests.server import Server, assert_log_clean

METRICS_LISTEN = "tcp:0:interface=127.0.0.1"
_METRICS_STARTED = re.compile(r"Metrics starting on (\d+)")

OK = sh('printf "Content-Type: text/plain\\r\\n\\r\\nok\\n"')
EXIT_3 = sh('printf "Content-Type: text/plain\\r\\n\\r\\nthree\\n"\nexit 3')
SEGV = sh("kill -SEGV $$")
SLEEP = sh('sleep 10\nprintf "Content-Type: text/plain\\r\\n\\r\\nlate\\n"')
BROKEN = "#!/nonexistent/interpreter\n"


def hold(flag) -> str:
    """A script that runs until C{flag} exists (10 s at most), then answers."""
    return sh(
        f'i=0\nwhile [ ! -e "{flag}" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n'
        'printf "Content-Type: text/plain\\r\\n\\r\\nheld\\n"'
    )


@pytest.fixture
def site(docroot):
    """The scripts and files of the mix; C{flag} releases the holding scripts."""
    flag = docroot.parent / "release"
    write_script(docroot, "ok.cgi", OK)
    write_script(docroot, "exit3.cgi", EXIT_3)
    write_script(docroot, "segv.cgi", SEGV)
    write_script(docroot, "sleep.cgi", SLEEP)
    write_script(docroot, "broken.cgi", BROKEN)
    write_script(docroot, "hold.cgi", hold(flag))
    (docroot / "hello.txt").write_text("hello\n")
    return flag


def metrics_port(server: Server) -> int:
    """The port the metrics listener announced in the server's log."""
    found = wait_for(lambda: _METRICS_STARTED.search(server.log()), timeout=10)
    assert found, server.log()[-3000:]
    return int(found.group(1))


def scrape(port: int) -> dict:
    """Every sample of /metrics, by name and labels, read with the client library's own parser."""
    response = request(port, "GET", "/metrics")
    assert response.status == 200, response
    assert response.header("Content-Type").startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples called C{name} that have C{labels} (summed over any other label, such as worker)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def scrape_until(port: int, condition) -> dict | None:
    """A scrape for which C{condition} holds, waiting (bounded) for it; None if none came."""
    found = []

    def holds():
        samples = scrape(port)
        if condition(samples):
            found.append(samples)
            return True
        return False

    return found[-1] if wait_for(holds) else None


def status_json(port: int, target: str = "/status?format=json") -> dict:
    response = request(port, "GET", target)
    assert response.status == 200 and response.header("Content-Type") == "application/json", response
    return json.loads(response.body)


def running(port: int, script: str) -> list[dict]:
    return [row for row in status_json(port)["running"] if row["script"] == script]


def hold_connection(port: int) -> Connection:
    """A connection whose request for /hold.cgi has been sent."""
    connection = Connection(port)
    connection.send(b"GET /hold.cgi HTTP/1.1\r\nHost: x\r\n\r\n")
    return connection


def test_counters_move_by_what_happened(serve, site, docroot):
    """After a known mix of requests, each counter has moved by exactly what happened, no more."""
    server = serve("--metrics", METRICS_LISTEN, "--timeout", "1", "--max-scripts", "1", "--max-queue", "1")
    port = metrics_port(server)
    before = scrape(port)
    bodies = 0

    def get(target, expected, method="GET", body=None):
        nonlocal bodies
        response = request(server.port, method, target, [("Content-Type", "text/plain")] if body else (), body)
        assert response.status == expected, (target, response)
        bodies += len(response.body)
        return response

    get("/ok.cgi", 200)
    get("/ok.cgi", 200, "POST", b"eleven byte")
    get("/hello.txt", 200)
    get("/missing.txt", 404)
    get("/exit3.cgi", 200)
    get("/segv.cgi", 502)
    get("/sleep.cgi", 504)
    get("/broken.cgi", 502)

    # A client that leaves while its script runs.
    with Connection(server.port) as leaving:
        leaving.send(b"GET /sleep.cgi HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: running(port, "/sleep.cgi"))
    assert wait_for(lambda: not running(port, "/sleep.cgi"))

    # One script running, one queued, the next refused.
    with Connection(server.port) as first, Connection(server.port) as second:
        first.send(b"GET /hold.cgi HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: running(port, "/hold.cgi"))
        second.send(b"GET /hold.cgi HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: total(scrape(port), "cgiserve_requests_queued") == 1)
        during = scrape(port)
        assert (total(during, "cgiserve_scripts_running"), total(during, "cgiserve_script_slots")) == (1, 1)
        refused = get("/ok.cgi", 503)
        assert refused.header("Retry-After") == "5"
        site.touch()
        for held in (first, second):
            response = held.read_response()
            assert response.status == 200
            bodies += len(response.body)

    expected_requests = {"2xx": 6, "4xx": 2, "5xx": 4}
    after = scrape_until(
        port,
        lambda now: total(now, "cgiserve_scripts_running") == 0
        and total(now, "cgiserve_requests_total") - total(before, "cgiserve_requests_total") == 12,
    )
    assert after, "the requests were not all counted"

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert {status: moved("cgiserve_requests_total", status=status) for status in expected_requests} == expected_requests
    assert moved("cgiserve_requests_total", method="POST") == 1
    outcomes = {
        "exit_0": 4,
        "exit_nonzero": 1,
        "signal": 1,
        "timeout": 1,
        "client_gone": 1,
        "busy": 1,
        "could_not_start": 1,
        "bad_output": 0,
        "shutdown": 0,
        "limit": 0,
    }
    assert {name: moved("cgiserve_script_runs_total", outcome=name) for name in outcomes} == outcomes
    # Started runs only: not the refused one nor the one that could not start.
    assert moved("cgiserve_script_run_seconds_count") == 8
    assert moved("cgiserve_script_run_seconds_bucket", le="+Inf") == 8
    # The timeout's run alone lasted its second.
    assert moved("cgiserve_script_run_seconds_sum") >= 1.0
    assert moved("cgiserve_first_byte_seconds_count", handler="server") == 2
    assert moved("cgiserve_first_byte_seconds_count", handler="script") == 9
    assert moved("cgiserve_request_body_bytes_total") == 11
    assert moved("cgiserve_response_body_bytes_total") == bodies
    assert total(after, "process_open_fds") > 0 and total(after, "process_cpu_seconds_total") > 0
    assert not [key for key in after if any(name == "script" for name, _ in key[1])]
    assert_log_clean(server)


def test_status_page_shows_a_running_script_then_not(serve, site, docroot):
    """/status lists a running script with its request, never its query string or headers; then no longer does."""
    server = serve("--metrics", METRICS_LISTEN)
    port = metrics_port(server)
    with Connection(server.port) as client:
        client.send(b"POST /hold.cgi/more?secret=hunter2 HTTP/1.1\r\nHost: x\r\nX-Secret: swordfish\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 4\r\n\r\nbody")
        [row] = wait_for(lambda: running(port, "/hold.cgi"))
        assert (row["method"], row["path"], row["client"], row["bytes_in"], row["bytes_out"]) == (
            "POST", "/hold.cgi/more", "127.0.0.1", 4, 0,
        )
        assert row["pid"] > 0 and row["running_seconds"] >= 0 and len(row["request_id"]) == 32
        page = request(port, "GET", "/status")
        assert page.status == 200 and page.header("Content-Type") == "text/html; charset=utf-8"
        assert page.header("Cache-Control") == "no-store"
        text = page.body.decode("utf-8")
        assert "/hold.cgi/more" in text and row["request_id"] in text
        as_json = request(port, "GET", "/status?format=json").body.decode("utf-8")
        for secret in ("hunter2", "swordfish", "secret"):
            assert secret not in text and secret not in as_json
        data = json.loads(as_json)
        assert (data["scripts_running"], data["requests_queued"]) == (1, 0)
        site.touch()
        response = client.read_response()
        assert (response.status, response.body, response.header("X-Request-Id")) == (200, b"held\n", row["request_id"])
    assert wait_for(lambda: not running(port, "/hold.cgi"))
    assert status_json(port)["scripts_running"] == 0


def test_metrics_are_not_on_the_site(serve, site, docroot):
    """The public listener serves no metrics: /metrics and /status there are paths like any other; the reverse too."""
    server = serve("--metrics", METRICS_LISTEN)
    port = metrics_port(server)
    assert port != server.port
    for path in ("/metrics", "/status"):
        assert request(server.port, "GET", path).status == 404
    (docroot / "metrics").write_text("just a file\n")
    assert request(server.port, "GET", "/metrics").body == b"just a file\n"
    assert request(port, "GET", "/hello.txt").status == 404
    assert request(port, "GET", "/").status == 200


def test_openmetrics_when_asked(serve, site, docroot):
    """A scraper that asks for OpenMetrics gets it; HEAD gets the head alone."""
    server = serve("--metrics", METRICS_LISTEN)
    port = metrics_port(server)
    response = request(port, "GET", "/metrics", [("Accept", "application/openmetrics-text; version=1.0.0")])
    assert response.header("Content-Type").startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")
    head = request(port, "HEAD", "/metrics")
    assert (head.status, head.body) == (200, b"")
    assert request(port, "POST", "/metrics", body=b"").status == 405


def test_per_script_label(serve, site, docroot):
    """--metrics-per-script labels the runs and their time with each script's path."""
    server = serve("--metrics", METRICS_LISTEN, "--metrics-per-script")
    port = metrics_port(server)
    for target in ("/ok.cgi", "/ok.cgi", "/exit3.cgi"):
        assert request(server.port, "GET", target).status == 200
    after = scrape_until(port, lambda now: total(now, "cgiserve_script_run_seconds_count") == 3)
    assert after
    assert total(after, "cgiserve_script_runs_total", outcome="exit_0", script="/ok.cgi") == 2
    assert total(after, "cgiserve_script_runs_total", outcome="exit_nonzero", script="/exit3.cgi") == 1
    assert total(after, "cgiserve_script_run_seconds_count", script="/ok.cgi") == 2


def test_workers_give_the_server_wide_truth(site, docroot):
    """With --workers 2, the totals summed over workers are every request, and the status lists both workers' scripts."""
    with Server(docroot, "--workers", "2", "--metrics", METRICS_LISTEN) as server:
        port = metrics_port(server)
        before = scrape(port)
        assert total(before, "cgiserve_workers") == 2
        for _ in range(10):
            assert request(server.port, "GET", "/ok.cgi").status == 200
        # Which worker accepts a connection is the kernel's choice, and it
        # favours one: so the worker holding the first script is stopped
        # while the second connection is made, which only the other can take.
        held = []
        try:
            held.append(hold_connection(server.port))
            assert wait_for(lambda: len(running(port, "/hold.cgi")) == 1)
            pids = {worker["worker"]: worker["pid"] for worker in status_json(port)["workers"]}
            first = pids.pop(running(port, "/hold.cgi")[0]["worker"])
            (other,) = pids.values()
            os.kill(first, signal.SIGSTOP)
            try:
                held.append(hold_connection(server.port))
                assert wait_for(lambda: procfs.children_running(other, b"hold.cgi")), "the other worker did not take it"
            finally:
                os.kill(first, signal.SIGCONT)
            assert wait_for(lambda: len(running(port, "/hold.cgi")) == 2)
            rows = running(port, "/hold.cgi")
            assert len({row["worker"] for row in rows}) == 2, rows
            data = status_json(port)
            assert data["scripts_running"] == len(held)
            assert sorted(worker["worker"] for worker in data["workers"]) == sorted({row["worker"] for row in rows})
            assert all(worker["answered"] for worker in data["workers"])
            assert "<th>Worker</th>" in request(port, "GET", "/status").body.decode("utf-8")
            site.touch()
            for connection in held:
                assert connection.read_response().status == 200
        finally:
            for connection in held:
                connection.close()
        expected = 10 + len(held)
        runs, requests = "cgiserve_script_runs_total", "cgiserve_requests_total"
        after = scrape_until(port, lambda now: total(now, runs, outcome="exit_0") - total(before, runs, outcome="exit_0") == expected)
        assert after, "not every run was counted"
        assert total(after, requests, status="2xx") - total(before, requests, status="2xx") == expected
        workers = {dict(labels)["worker"] for name, labels in after if name == "cgiserve_requests_total"}
        assert len(workers) == 2
        assert {dict(labels)["worker"] for name, labels in after if name == "process_open_fds"} == workers | {"master"}
        assert total(after, "cgiserve_script_slots") == default_max_scripts()
        assert_log_clean(server)


def test_shutdown_with_a_scraper_connected(serve, site, docroot):
    """A scraper's keep-alive connection to the metrics listener does not hold up the shutdown."""
    server = serve("--metrics", METRICS_LISTEN)
    port = metrics_port(server)
    with Connection(port) as scraper:
        assert scraper.request("GET", "/metrics").status == 200
        started = time.monotonic()
        assert server.stop() is not None
        assert time.monotonic() - started < 10
        with pytest.raises((OSError, socket.timeout, ConnectionError)):
            scraper.request("GET", "/metrics")


def test_client_gone_while_queued_gives_up_its_place(serve, site, docroot):
    """
    A client that leaves while its request waits for a script slot frees
    its place in the queue at once, and its script never runs; the next
    request takes the place and is answered once the slot is free.
    """
    marks = docroot.parent / "marks"
    marks.mkdir()
    write_script(docroot, "mark.cgi", sh(f'touch "{marks}/$QUERY_STRING"\nprintf "Content-Type: text/plain\\r\\n\\r\\nmarked\\n"'))
    server = serve("--metrics", METRICS_LISTEN, "--max-scripts", "1", "--max-queue", "1", "--queue-timeout", "30")
    port = metrics_port(server)

    def queued(count: int) -> bool:
        return wait_for(lambda: total(scrape(port), "cgiserve_requests_queued") == count)

    with hold_connection(server.port) as first:
        assert wait_for(lambda: running(port, "/hold.cgi"))
        with Connection(server.port) as leaving:
            leaving.send(b"GET /mark.cgi?left HTTP/1.1\r\nHost: x\r\n\r\n")
            assert queued(1)
        assert queued(0), "the place of the client that left was not given up"
        assert wait_for(lambda: "left the queue (client gone or server stopping)" in server.log())
        with Connection(server.port) as staying:
            staying.send(b"GET /mark.cgi?stayed HTTP/1.1\r\nHost: x\r\n\r\n")
            assert queued(1)
            site.touch()
            assert first.read_response().body == b"held\n"
            response = staying.read_response()
    assert (response.status, response.body) == (200, b"marked\n")
    assert sorted(path.name for path in marks.iterdir()) == ["stayed"], "the script of the client that left ran"
    assert_log_clean(server)
