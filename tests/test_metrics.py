"""The metrics and the status page: outcomes as a table, counting and gauges on fake runners, the status data and its escaping."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cgiserve import metrics, status
from cgiserve.accesslog import Entry
from cgiserve.metrics import Metrics, WorkerFigures, merge, outcome
from cgiserve.tap import Options
from tests.test_accesslog import entry as access_entry

ROOT = "/srv/www"


def entry(**changes) -> Entry:
    """The access log tests' entry, with no body bytes unless told."""
    return access_entry(**{"bytes_out": 0, **changes})


def ran(**changes) -> Entry:
    """An entry for a script that started and ended, exiting 0 unless told otherwise."""
    return entry(**{"script": f"{ROOT}/x.cgi", "exit_code": 0, "script_seconds": 0.25, **changes})


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, None),
        ({"script": f"{ROOT}/x.cgi", "exit_code": 0}, "exit_0"),
        ({"script": f"{ROOT}/x.cgi", "exit_code": 3}, "exit_nonzero"),
        ({"script": f"{ROOT}/x.cgi", "signal": 11}, "signal"),
        ({"script": f"{ROOT}/x.cgi", "signal": 15, "stopped": "timeout"}, "timeout"),
        ({"script": f"{ROOT}/x.cgi", "signal": 9, "stopped": "client gone"}, "client_gone"),
        ({"script": f"{ROOT}/x.cgi", "exit_code": 0, "stopped": "shutdown"}, "shutdown"),
        ({"script": f"{ROOT}/x.cgi", "signal": 15, "stopped": "bad output"}, "bad_output"),
        ({"script": f"{ROOT}/x.cgi", "exit_code": 3, "stopped": "bad output"}, "bad_output"),
        ({"script": f"{ROOT}/x.cgi", "signal": 11, "stopped": "bad output"}, "signal"),
        ({"script": f"{ROOT}/x.cgi", "signal": 24, "stopped": "bad output", "limit": "cpu"}, "limit"),
        ({"script": f"{ROOT}/x.cgi", "not_started": "busy"}, "busy"),
        ({"script": f"{ROOT}/x.cgi", "not_started": "could not start"}, "could_not_start"),
        ({"script": f"{ROOT}/x.cgi", "not_started": "client gone"}, "client_gone"),
    ],
)
def test_outcome(changes, expected):
    """Why a script was stopped wins over how it exited; a run that never started says why; no script, no outcome."""
    assert outcome(entry(**changes)) == expected
    assert expected is None or expected in metrics.OUTCOMES


# -- counting and gauges, on a fake runner


class FakeSlots:
    def __init__(self, limit: int, waiting: int = 0) -> None:
        self.limit = limit
        self.waiting = [Deferred() for _ in range(waiting)]


class FakeRequest:
    """The parts of a cgiserve request that the status page reads."""

    def __init__(self, method=b"POST", path=b"/x.cgi", client=None, body_received=10, sent=20):
        self.method = method
        self.path = path
        self.client = client or IPv4Address("TCP", "192.0.2.7", 50000)
        self.body_received = body_received
        self.sentLength = sent

    def getClientAddress(self):
        return self.client


def fake_run(request=None, started_at=95.0, pgid=4242, script=f"{ROOT}/x.cgi"):
    """A stand-in for a running ScriptProtocol: its request is its sink's."""
    return SimpleNamespace(
        script=script,
        request_id="0123abcd",
        pgid=pgid,
        started_at=started_at,
        sink=SimpleNamespace(request=request or FakeRequest()),
    )


def fake_runner(active=(), limit=4, waiting=0):
    return SimpleNamespace(active=list(active), slots=FakeSlots(limit, waiting))


def scrape(collector) -> dict:
    """Every sample of a scrape, by name and labels (the worker label included), read back with the client's parser."""
    text = generate_latest(collector).decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def new_metrics(runner=None, **kwargs) -> Metrics:
    clock = Clock()
    clock.advance(100)
    return Metrics(runner or fake_runner(), ROOT, reactor=clock, **kwargs)


def test_requests_and_bytes_counted_once_each():
    """Each entry counts one request by status class and method, and its body bytes."""
    counted = new_metrics()
    counted.record(entry(status=200, bytes_out=5))
    counted.record(entry(status=204, method=b"POST", bytes_in=7))
    counted.record(entry(status=404, bytes_out=3))
    samples = scrape(counted)
    assert value(samples, "cgiserve_requests_total", status="2xx", method="GET") == 1
    assert value(samples, "cgiserve_requests_total", status="2xx", method="POST") == 1
    assert value(samples, "cgiserve_requests_total", status="4xx", method="GET") == 1
    assert value(samples, "cgiserve_request_body_bytes_total") == 7
    assert value(samples, "cgiserve_response_body_bytes_total") == 8


def test_unknown_methods_share_one_label():
    """A method the server does not know by name counts as "other": clients cannot grow the label set."""
    counted = new_metrics()
    for method in (b"BREW", b"WHEN", b"G\xffT"):
        counted.record(entry(method=method, status=405))
    samples = scrape(counted)
    assert value(samples, "cgiserve_requests_total", status="4xx", method="other") == 3
    assert not [key for key in samples if ("method", "BREW") in key[1]]


def test_script_runs_by_outcome_and_run_time():
    """A run counts once under its outcome; run time and time to first byte go to their histograms."""
    counted = new_metrics()
    counted.record(ran(first_byte_seconds=0.002))
    counted.record(ran(exit_code=None, signal=15, stopped="timeout", script_seconds=1.5, status=504))
    counted.record(entry(script=f"{ROOT}/x.cgi", not_started="busy", status=503, first_byte_seconds=0.0005))
    counted.record(entry(first_byte_seconds=0.0001))
    samples = scrape(counted)
    assert value(samples, "cgiserve_script_runs_total", outcome="exit_0") == 1
    assert value(samples, "cgiserve_script_runs_total", outcome="timeout") == 1
    assert value(samples, "cgiserve_script_runs_total", outcome="busy") == 1
    # Every outcome is there from the start, at 0.
    assert ("cgiserve_script_runs_total", (("outcome", "signal"),)) in samples
    assert value(samples, "cgiserve_script_run_seconds_count") == 2
    assert value(samples, "cgiserve_script_run_seconds_sum") == 1.75
    assert value(samples, "cgiserve_script_run_seconds_bucket", le="1.0") == 1
    assert value(samples, "cgiserve_first_byte_seconds_count", handler="script") == 2
    assert value(samples, "cgiserve_first_byte_seconds_count", handler="server") == 1
    assert value(samples, "cgiserve_first_byte_seconds_bucket", handler="script", le="0.001") == 1
    assert not [key for key in samples if key[0].endswith("_created")]
    assert not [key for key in samples if any(name == "script" for name, _ in key[1])]


def test_per_script_label():
    """--metrics-per-script labels the runs and their time with the script's path below the root."""
    counted = new_metrics(per_script=True)
    counted.record(ran())
    counted.record(ran(script=f"{ROOT}/cgi-bin/y.cgi", exit_code=1))
    samples = scrape(counted)
    assert value(samples, "cgiserve_script_runs_total", outcome="exit_0", script="/x.cgi") == 1
    assert value(samples, "cgiserve_script_runs_total", outcome="exit_nonzero", script="/cgi-bin/y.cgi") == 1
    assert value(samples, "cgiserve_script_run_seconds_count", script="/cgi-bin/y.cgi") == 1


def test_warm_starts_counted_with_warm_python():
    """With --warm-python, each run counts as a warm or an exec'd start."""
    pool = SimpleNamespace(state="ready", current=SimpleNamespace(served=12))
    counted = new_metrics(warm_pools={"/usr/bin/python3": pool})
    counted.record(ran(warm=True))
    counted.record(ran(warm=False))
    counted.record(ran(warm=True))
    samples = scrape(counted)
    assert value(samples, "cgiserve_script_starts_total", start="warm") == 2
    assert value(samples, "cgiserve_script_starts_total", start="exec") == 1
    assert value(samples, "cgiserve_warm_helper_ready", interpreter="/usr/bin/python3") == 1
    assert value(samples, "cgiserve_warm_helper_requests", interpreter="/usr/bin/python3") == 12


def test_gauges_read_at_scrape_time():
    """Scripts running, requests queued and slots are the runner's figures when scraped; the process's are there too."""
    runner = fake_runner(active=[fake_run(), fake_run()], limit=4, waiting=3)
    gauges = new_metrics(runner)
    samples = scrape(gauges)
    assert value(samples, "cgiserve_scripts_running") == 2
    assert value(samples, "cgiserve_requests_queued") == 3
    assert value(samples, "cgiserve_script_slots") == 4
    runner.active.clear()
    samples = scrape(gauges)
    assert value(samples, "cgiserve_scripts_running") == 0
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0


# -- the status page


def test_running_rows_show_path_never_query():
    """A running script's row: its script below the root, request id, client, method, path only, pid, time and bytes."""
    request = FakeRequest(path=b"/x.cgi/more")
    [row] = status.running_rows([fake_run(request)], now=100.0, root=ROOT)
    assert row == {
        "script": "/x.cgi",
        "request_id": "0123abcd",
        "client": "192.0.2.7",
        "method": "POST",
        "path": "/x.cgi/more",
        "pid": 4242,
        "running_seconds": 5.0,
        "bytes_in": 10,
        "bytes_out": 20,
    }


def test_status_data_from_a_snapshot():
    """The status data's totals come from the metrics; the running scripts from the runner, longest first."""
    runner = fake_runner(active=[fake_run(started_at=99.0), fake_run(started_at=90.0)], limit=4)
    counted = new_metrics(runner)
    counted.record(ran())
    counted.record(entry(status=404, bytes_out=9))
    data = counted.status()
    assert data["uptime_seconds"] == 0
    assert (data["requests"], data["requests_by_status"]) == (2, {"2xx": 1, "4xx": 1})
    assert data["script_runs"] == 1 and data["script_runs_by_outcome"]["exit_0"] == 1
    assert (data["scripts_running"], data["script_slots"], data["requests_queued"]) == (2, 4, 0)
    assert data["response_body_bytes"] == 9
    assert [row["running_seconds"] for row in data["running"]] == [10.0, 1.0]
    assert "workers" not in data
    assert json.loads(status.render_json(data)) == data


HOSTILE = '<script>alert("x")</script>&amp;'


def test_html_escapes_everything():
    """Whatever a client could put into a row (path, method, address) reaches the page escaped."""
    request = FakeRequest(method=HOSTILE.encode(), path=f"/{HOSTILE}".encode(), client=IPv4Address("TCP", HOSTILE, 1))
    runner = fake_runner(active=[fake_run(request, script=f"{ROOT}/{HOSTILE}")])
    page = status.render_html(new_metrics(runner).status()).decode("utf-8")
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;") == 4
    assert '<meta http-equiv="refresh" content="5">' in page


def test_html_lists_workers_and_their_scripts():
    """With workers, each row and the workers table name the worker; one that did not answer says so."""
    snapshot = {"started": 0.0, "families": [], "running": status.running_rows([fake_run()], 100.0, ROOT)}
    workers = [{"worker": 3, "pid": 77, "answered": True}, {"worker": 4, "pid": 78, "answered": False}]
    data = status.status_data(100.0, 40.0, [(3, snapshot)], workers)
    assert data["running"][0]["worker"] == 3
    page = status.render_html(data).decode("utf-8")
    assert "<th>Worker</th>" in page
    assert "no (left out of the totals)" in page
    assert "1 min" in page


@pytest.mark.parametrize(
    "seconds, text",
    [(0.25, "0.25 s"), (12.4, "12 s"), (61, "1 min 1 s"), (3600 * 5 + 7, "5 h 7 s"), (86400 * 2 + 3600 * 3 + 5, "2 d 3 h")],
)
def test_duration(seconds, text):
    assert status.duration(seconds) == text


# -- workers: the master's merge


def test_merge_labels_each_sample_with_its_worker():
    """Each worker's samples keep their own labels plus the worker's number; the master's own are "master"."""
    one, two = new_metrics(), new_metrics()
    one.record(entry())
    two.record(entry())
    two.record(entry(status=500))
    own = new_metrics().registry.collect()
    merged = merge([(1, one.snapshot()), (2, two.snapshot())], [family for family in own if family.name.startswith("process")])
    samples = scrape(SimpleNamespace(collect=lambda: merged))
    assert value(samples, "cgiserve_requests_total", status="2xx", method="GET", worker="1") == 1
    assert value(samples, "cgiserve_requests_total", status="2xx", method="GET", worker="2") == 1
    assert value(samples, "cgiserve_requests_total", status="5xx", method="GET", worker="2") == 1
    assert value(samples, "process_open_fds", worker="master") > 0
    assert len([family for family in merged if family.name == "cgiserve_requests"]) == 1


class FakeWorker:
    def __init__(self, number, pid, answer):
        self.number, self.pid, self.serving = number, pid, True
        self.answer = answer
        self.asked = []

    def snapshot(self, timeout):
        self.asked.append(timeout)
        return succeed(self.answer)


class WorkerFiguresTests(SynchronousTestCase):
    def test_merges_what_workers_answer(self):
        """A scrape asks each serving worker; one that does not answer is left out and shown as such."""
        one = new_metrics(fake_runner(active=[fake_run()], limit=2))
        one.record(entry())
        workers = [FakeWorker(1, 501, one.snapshot()), FakeWorker(2, 502, None)]
        starting = FakeWorker(3, 503, None)
        starting.serving = False
        arbiter = SimpleNamespace(workers={*workers, starting}, restarts=2)
        clock = Clock()
        figures = self.successResultOf(WorkerFigures(arbiter, clock).gather())
        self.assertEqual(starting.asked, [])
        samples = scrape(figures)
        self.assertEqual(value(samples, "cgiserve_requests_total", status="2xx", method="GET", worker="1"), 1)
        self.assertEqual(value(samples, "cgiserve_workers"), 2)
        self.assertEqual(value(samples, "cgiserve_worker_restarts_total"), 2)
        self.assertEqual(value(samples, "cgiserve_worker_pid", worker="2"), 502)
        data = figures.status()
        self.assertEqual([row["worker"] for row in data["running"]], [1])
        self.assertEqual(
            data["workers"], [{"worker": 1, "pid": 501, "answered": True}, {"worker": 2, "pid": 502, "answered": False}]
        )
        self.assertEqual((data["requests"], data["script_slots"]), (1, 2))


# -- options


def test_metrics_needs_the_client_library(tmp_path, monkeypatch):
    """Without prometheus_client, --metrics is a usage error that says what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(usage.UsageError, match=r"pip install 'cgiserve\[metrics\]'"):
        Options().parseOptions(["--root", str(tmp_path), "--metrics", "tcp:0:interface=127.0.0.1"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics-per-script"], "--metrics-per-script needs --metrics"),
        (["--metrics", "nonsense:1"], "--metrics nonsense:1"),
        (["--metrics", "tcp:notaport"], "--metrics tcp:notaport"),
    ],
)
def test_bad_metrics_options(tmp_path, args, message):
    """Per-script labels without metrics, or an endpoint Twisted cannot parse, are usage errors."""
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--root", str(tmp_path), *args])
