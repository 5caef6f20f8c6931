# -*- test-case-name: tests.test_tap,tests.test_e2e_workers -*-
"""The serving tree: what one process needs to answer requests, whether it serves alone or as a master's worker."""

from __future__ import annotations

from twisted.application import service

from cgiserve.drain import Drain, drain_seconds
from cgiserve.environ import base_environ
from cgiserve.listen import ListeningService
from cgiserve.resource import DocumentRoot
from cgiserve.runner import ScriptRunner
from cgiserve.site import Site
from cgiserve.spawn import spawn_script


def serving_service(options, endpoints) -> service.MultiService:
    """
    The warm Python helpers if any, the script runner, the site listening
    on C{endpoints} (one per --listen description, in their order), the
    access log if any, and their drain.
    """
    config = options.config()
    top = service.MultiService()
    spawner = spawn_script
    if options["warm-python"]:
        from cgiserve.warm import WarmPythons

        warm = WarmPythons(options["warm-python"], base_environ(config.environ), options["warm-preload"])
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
    if options["access-log"]:
        # Imported only when used, like auth.
        from cgiserve.accesslog import AccessLog

        site.access_log = AccessLog(options["access-log"], options["access-log-format"])
        site.access_log.setServiceParent(top)
    for description, endpoint in zip(options["listen"], endpoints, strict=True):
        ListeningService(description, endpoint, site).setServiceParent(top)
    # Stopping: the ports close at once, running scripts get their grace,
    # and each connection closes once its response is out.
    Drain(site, drain_seconds(config.shutdown_grace, config.kill_grace)).setServiceParent(top)
    return top
