# -*- test-case-name: tests.test_metrics,tests.test_e2e_metrics -*-
"""
The Prometheus metrics (C{--metrics}): counted once per request from its
access log entry, gauges read at scrape time, and with C{--workers} the
master's merge of every worker's figures.
"""

from __future__ import annotations

import bisect
import itertools
import json
import signal

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet import defer

from cgiserve import record, status
from cgiserve.status import script_name

# Methods counted by name; any other is "other", so that clients cannot
# grow the label set.
METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"))
OTHER_METHOD = "other"

# How a script run ended, as the label value of cgiserve_script_runs_total.
EXIT_0 = "exit_0"
EXIT_NONZERO = "exit_nonzero"
SIGNAL = "signal"
_STOPPED = {"timeout": "timeout", "client gone": "client_gone", "shutdown": "shutdown", "bad output": "bad_output"}
_NOT_STARTED = {record.BUSY: "busy", record.COULD_NOT_START: "could_not_start", record.CLIENT_GONE: "client_gone"}
# Stopped by a --limit-* resource limit (the access log's limit field names it).
LIMIT = "limit"
OUTCOMES = (EXIT_0, EXIT_NONZERO, SIGNAL, *_STOPPED.values(), LIMIT, "could_not_start", "busy")
# What the server stops a script with; any other signal is the script's own end.
_STOP_SIGNALS = frozenset((None, signal.SIGTERM, signal.SIGKILL))

# Who answered a request, as the label value of the time to first byte.
SCRIPT = "script"
SERVER = "server"

# Scripts may run up to --timeout (60 s by default); the client library's
# default buckets stop at 10 s.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FIRST_BYTE_BUCKETS = (0.001, 0.0025, *RUN_BUCKETS)

# What the master of --workers adds to each worker's series, and to its own.
WORKER_LABEL = "worker"
MASTER = "master"

# How long a scrape waits for a worker's figures before it goes without them.
SNAPSHOT_SECONDS = 2.0


def outcome(entry) -> str | None:
    """How the script run of an access log entry ended (one of L{OUTCOMES}); None for a request that ran no script."""
    if entry.script is None:
        return None
    if entry.not_started is not None:
        return _NOT_STARTED[entry.not_started]
    if entry.limit is not None:
        return LIMIT
    if entry.stopped == "bad output" and entry.signal not in _STOP_SIGNALS:
        # A script that crashes (SIGSEGV) before its output is complete is
        # stopped for its bad output only after it has died: it crashed.
        return SIGNAL
    if entry.stopped is not None:
        return _STOPPED[entry.stopped]
    if entry.signal is not None:
        return SIGNAL
    return EXIT_0 if entry.exit_code == 0 else EXIT_NONZERO


class _Gauges:
    """The figures read at scrape time: the runner's slots and queue, and the warm Python helpers."""

    def __init__(self, runner, warm_pools) -> None:
        self.runner = runner
        self.warm_pools = warm_pools

    def collect(self):
        runner = self.runner
        yield GaugeMetricFamily("cgiserve_scripts_running", "Scripts running now.", value=len(runner.active))
        yield GaugeMetricFamily(
            "cgiserve_requests_queued", "Requests waiting for a script slot.", value=len(runner.slots.waiting)
        )
        yield GaugeMetricFamily("cgiserve_script_slots", "Scripts that may run at once.", value=runner.slots.limit)
        if not self.warm_pools:
            return
        ready = GaugeMetricFamily(
            "cgiserve_warm_helper_ready",
            "Whether the warm Python helper of an interpreter starts scripts now.",
            labels=["interpreter"],
        )
        served = GaugeMetricFamily(
            "cgiserve_warm_helper_requests", "Scripts the current warm Python helper has started.", labels=["interpreter"]
        )
        for interpreter, pool in self.warm_pools.items():
            ready.add_metric([interpreter], 1 if pool.state == "ready" else 0)
            served.add_metric([interpreter], pool.current.served if pool.current is not None else 0)
        yield ready
        yield served


class _Histogram:
    """Observations in fixed buckets and their sum, as a Prometheus histogram counts them."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds) -> None:
        self.bounds = bounds
        # One count per bucket, the last for values over every bound (+Inf); not cumulative.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        """The cumulative buckets, as HistogramMetricFamily takes them."""
        edges = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        return list(zip(edges, itertools.accumulate(self.counts)))


_STATUS_CLASSES = {number: f"{number}xx" for number in range(1, 6)}
_METHOD_LABELS = {method: method.decode("ascii") for method in METHODS}


class Metrics(service.Service):
    """
    The metrics of one serving process, in a registry of its own: a sink
    of the L{cgiserve.record.Recorder}, whose L{record} counts each
    request once, at its end; the runner's gauges and the process's CPU,
    memory and descriptors are read when scraped. Every label set is
    bounded: the script's path is a label only with C{per_script}.

    The counts are plain numbers, turned into metric families only when
    scraped: the reactor's thread alone counts and scrapes, so the client
    library's locked counters would only add to each request's cost.
    """

    name = "metrics"

    def __init__(self, runner, root: str, warm_pools=None, per_script: bool = False, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.runner = runner
        self.root = root
        self.reactor = reactor
        self.per_script = per_script
        self.warm = bool(warm_pools)
        self.started = reactor.seconds()
        # By (status class, method label).
        self.requests: dict[tuple[str, str], int] = {}
        self.request_bytes = 0
        self.response_bytes = 0
        self.first_byte = {handler: _Histogram(FIRST_BYTE_BUCKETS) for handler in (SCRIPT, SERVER)}
        # By outcome, or (outcome, script) with per_script; every outcome from
        # the start, so that a rate sees its first one.
        self.runs: dict = {} if per_script else dict.fromkeys(OUTCOMES, 0)
        # By script with per_script, else under None.
        self.run_seconds: dict[str | None, _Histogram] = {}
        self.starts = {"warm": 0, "exec": 0}
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(_Gauges(runner, warm_pools))
        registry.register(_Counts(self))

    # -- the recorder's sink

    def record(self, entry) -> None:
        """Count one request, once it and its script have ended."""
        key = (_STATUS_CLASSES.get(entry.status // 100, "other"), _METHOD_LABELS.get(entry.method, OTHER_METHOD))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.request_bytes += entry.bytes_in
        self.response_bytes += entry.bytes_out
        script = entry.script
        if entry.first_byte_seconds is not None:
            self.first_byte[SERVER if script is None else SCRIPT].observe(entry.first_byte_seconds)
        if script is None:
            return
        ended = outcome(entry)
        name = script_name(script, self.root) if self.per_script else None
        key = ended if name is None else (ended, name)
        self.runs[key] = self.runs.get(key, 0) + 1
        if entry.script_seconds is not None:
            histogram = self.run_seconds.get(name)
            if histogram is None:
                histogram = self.run_seconds[name] = _Histogram(RUN_BUCKETS)
            histogram.observe(entry.script_seconds)
            if self.warm:
                self.starts["warm" if entry.warm else "exec"] += 1

    def close(self) -> None:
        pass

    # -- what a scrape reads

    def gather(self) -> defer.Deferred:
        """The figures of this process, now: their C{collect} for /metrics, their C{status} for /status."""
        return defer.succeed(self)

    def collect(self):
        return self.registry.collect()

    def snapshot(self) -> dict:
        """This process's figures as plain values (for its master): its metric families, start and running scripts."""
        return {
            "started": self.started,
            "families": [family_values(family) for family in self.registry.collect()],
            "running": status.running_rows(self.runner.active, self.reactor.seconds(), self.root),
        }

    def snapshot_line(self) -> bytes:
        """A worker's answer to its master's request for a snapshot: one line of JSON."""
        return json.dumps(self.snapshot(), separators=(",", ":")).encode("utf-8") + b"\n"

    def status(self) -> dict:
        """The status page's data."""
        now = self.reactor.seconds()
        return status.status_data(now, self.started, [(None, self.snapshot())])


class _Counts:
    """The counts of a L{Metrics}, as the client library's metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        metrics = self.metrics
        script = ["script"] if metrics.per_script else []
        requests = CounterMetricFamily(
            "cgiserve_requests", "Requests answered, by status class and method.", labels=["status", "method"]
        )
        for labels, count in sorted(metrics.requests.items()):
            requests.add_metric(labels, count)
        yield requests
        yield CounterMetricFamily("cgiserve_request_body_bytes", "Request body bytes received.", value=metrics.request_bytes)
        yield CounterMetricFamily("cgiserve_response_body_bytes", "Response body bytes sent.", value=metrics.response_bytes)
        first_byte = HistogramMetricFamily(
            "cgiserve_first_byte_seconds",
            "Seconds from a request's start until its response head was written (HTTP/1.1).",
            labels=["handler"],
        )
        for handler, histogram in metrics.first_byte.items():
            first_byte.add_metric([handler], histogram.buckets(), histogram.sum)
        yield first_byte
        runs = CounterMetricFamily("cgiserve_script_runs", "Script runs, by how they ended.", labels=["outcome", *script])
        for key, count in metrics.runs.items():
            runs.add_metric(list(key) if script else [key], count)
        yield runs
        run_seconds = HistogramMetricFamily("cgiserve_script_run_seconds", "Seconds scripts ran.", labels=script)
        for name, histogram in sorted(metrics.run_seconds.items(), key=lambda item: item[0] or ""):
            run_seconds.add_metric([name] if script else [], histogram.buckets(), histogram.sum)
        yield run_seconds
        if metrics.warm:
            starts = CounterMetricFamily(
                "cgiserve_script_starts", "Scripts started, warm (--warm-python) or exec'd.", labels=["start"]
            )
            for start, count in metrics.starts.items():
                starts.add_metric([start], count)
            yield starts


def family_values(family: Metric) -> list:
    """A metric family as plain values that JSON carries: name, type, help, unit and its samples."""
    return [
        family.name,
        family.type,
        family.documentation,
        family.unit,
        [[sample.name, sample.labels, sample.value] for sample in family.samples],
    ]


def merge(snapshots, own=()) -> list[Metric]:
    """
    The metric families of every worker's snapshot (C{(number, snapshot)}
    pairs) and the master's C{own} families, one family per name, each
    sample labelled with the worker it came from (C{master} for the
    master's own): Prometheus users sum() across that label.
    """
    families: dict[str, Metric] = {}
    sources = [(MASTER, [family_values(family) for family in own])]
    sources += [(str(number), snapshot["families"]) for number, snapshot in snapshots]
    for worker, values in sources:
        for name, kind, documentation, unit, samples in values:
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, documentation, kind, unit)
            family.samples.extend(
                Sample(sample, {**labels, WORKER_LABEL: worker}, value) for sample, labels, value in samples
            )
    return list(families.values())


class WorkerFigures:
    """
    The figures of a master of C{--workers}: on each scrape it asks every
    serving worker for its snapshot over the worker's pipes, and merges
    them with its own process figures and its workers' (alive, restarts,
    pids). A worker that does not answer within L{SNAPSHOT_SECONDS} is
    left out of that scrape, and the status page says so.
    """

    def __init__(self, arbiter, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.arbiter = arbiter
        self.reactor = reactor
        self.started = reactor.seconds()
        self.process = ProcessCollector(registry=None)

    def gather(self) -> defer.Deferred:
        workers = sorted((worker for worker in self.arbiter.workers if worker.serving), key=lambda worker: worker.number)
        asked = [worker.snapshot(SNAPSHOT_SECONDS) for worker in workers]
        gathered = defer.gatherResults(asked)
        return gathered.addCallback(lambda answers: _Merged(self, list(zip(workers, answers))))

    def worker_families(self, answered):
        alive = GaugeMetricFamily("cgiserve_workers", "Worker processes serving.", value=len(answered))
        restarts = CounterMetricFamily(
            "cgiserve_worker_restarts", "Workers that ended unasked and were replaced.", value=self.arbiter.restarts
        )
        pids = GaugeMetricFamily("cgiserve_worker_pid", "The process id of each serving worker.", labels=[WORKER_LABEL])
        for worker, _ in answered:
            pids.add_metric([str(worker.number)], worker.pid)
        return [alive, restarts, pids]


class _Merged:
    """What one scrape of a master gathered: a C{collect} for /metrics and a C{status} for /status."""

    def __init__(self, figures: WorkerFigures, answered) -> None:
        self.figures = figures
        self.answered = answered
        self.snapshots = [(worker.number, snapshot) for worker, snapshot in answered if snapshot is not None]

    def collect(self):
        return merge(self.snapshots, self.figures.process.collect()) + self.figures.worker_families(self.answered)

    def status(self) -> dict:
        workers = [
            {"worker": worker.number, "pid": worker.pid, "answered": snapshot is not None}
            for worker, snapshot in self.answered
        ]
        figures = self.figures
        return status.status_data(figures.reactor.seconds(), figures.started, self.snapshots, workers)
