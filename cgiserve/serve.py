# -*- test-case-name: tests.test_tap,tests.test_e2e_workers -*-
"""The serving tree: what one process needs to answer requests, whether it serves alone or as a master's worker."""

from __future__ import annotations

from twisted.application import service

from cgiserve.drain import Drain, drain_seconds
from cgiserve.environ import base_environ
from cgiserve.limits import LimitedSpawner
from cgiserve.listen import ListeningService
from cgiserve.resource import DocumentRoot
from cgiserve.runner import ScriptRunner
from cgiserve.site import Site
from cgiserve.spawn import spawn_script


def serving_service(options, endpoints, metrics_endpoint=None) -> service.MultiService:
    """
    The warm Python helpers if any, the script runner (whose scripts start
    under the --limit-* options' limits, if any), the site listening
    on C{endpoints} (one per --listen description, in their order), the
    access log and the metrics if asked for, and their drain; the metrics
    listener on C{metrics_endpoint}, if given (a worker of --workers has
    metrics, which its master serves).
    """
    config = options.config()
    top = service.MultiService()
    spawner = spawn_script
    warm = None
    if config.limits:
        spawner = LimitedSpawner(config.limits, spawner, options["prlimit"])
    if options["warm-python"]:
        from cgiserve.warm import WarmPythons

        warm = WarmPythons(
            options["warm-python"], base_environ(config.environ), options["warm-preload"], spawner=spawner, limits=config.limits
        )
        warm.setServiceParent(top)
        spawner = warm.spawner
    runner = ScriptRunner(
        config.max_scripts, config.max_queue, config.queue_timeout, config.shutdown_grace, spawner=spawner
    )
    runner.setServiceParent(top)
    root = DocumentRoot(config.root, config, runner)
    if options["htpasswd"]:
        # Imported only when used: a server without it stays smaller.
        from cgiserve.auth import BasicAuthGuard, HtpasswdChecker

        checker = HtpasswdChecker(options["htpasswd"])
        root = BasicAuthGuard(root, checker, options["auth-realm"], options["auth-path"])
    site = Site(root, config)
    # Each imported only when used, like auth.
    sinks = []
    metrics = None
    if options["access-log"]:
        from cgiserve.accesslog import AccessLog

        sinks.append(AccessLog(options["access-log"], options["access-log-format"]))
    if options["metrics"]:
        from cgiserve.metrics import Metrics

        pools = warm.pools if warm is not None else None
        metrics = Metrics(runner, config.root, pools, per_script=options["metrics-per-script"])
        sinks.append(metrics)
    if sinks:
        from cgiserve.record import Recorder

        for sink in sinks:
            sink.setServiceParent(top)
        site.recorder = Recorder(sinks)
        site.recorder.setServiceParent(top)
    for description, endpoint in zip(options["listen"], endpoints, strict=True):
        ListeningService(description, endpoint, site).setServiceParent(top)
    if metrics_endpoint is not None:
        from cgiserve.monitor import MonitorSite

        ListeningService(options["metrics"], metrics_endpoint, MonitorSite(metrics)).setServiceParent(top)
    # Stopping: the ports close at once, running scripts get their grace,
    # and each connection closes once its response is out.
    Drain(site, drain_seconds(config.shutdown_grace, config.kill_grace)).setServiceParent(top)
    return top
