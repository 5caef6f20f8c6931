# -*- test-case-name: tests.test_record -*-
"""One record per request, built once its script has ended and handed to each sink: the access log, the metrics."""

from __future__ import annotations

from twisted.application import service

from cgiserve.accesslog import Entry, request_entry, script_fields

# Why a script never ran (L{Entry.not_started}).
BUSY = "busy"
COULD_NOT_START = "could not start"
CLIENT_GONE = "client gone"


def not_started(refused: bool, ended: bool) -> str:
    """
    Why a script that has no process group yet never ran: no slot
    (C{refused}), could not be executed (C{ended} without a start), or
    its client left while it waited for a slot.
    """
    if refused:
        return BUSY
    if ended:
        return COULD_NOT_START
    return CLIENT_GONE


class Recorder(service.Service):
    """
    Watches requests for its sinks (the access log, the metrics) and
    hands each sink's C{record} one L{Entry} per request: when the
    response has finished or the client has gone and, for a request that
    ran a script, not before that script has ended, so that the entry can
    say how. The entry is built once, at the end, whatever the number of
    sinks: a request's own fields do not change once it has ended.

    Once the reactor has shut down, each sink's C{close} is called, after
    the entries of the last requests cut short by the shutdown.
    """

    def __init__(self, sinks, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.sinks = tuple(sinks)
        self.reactor = reactor
        # Entries that wait for their script to end.
        self.waiting = 0
        self._closing = False
        self._closed = False

    def startService(self) -> None:
        super().startService()
        self.reactor.addSystemEventTrigger("after", "shutdown", self.close)

    def close(self) -> None:
        """Close the sinks once no entry waits for its script; entries after that are dropped."""
        self._closing = True
        if self.waiting or self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            sink.close()

    def _hand(self, entry: Entry) -> None:
        if self._closed:
            return
        for sink in self.sinks:
            sink.record(entry)

    def watch(self, request) -> None:
        """
        Start timing a request; calling it again does nothing. The request
        then calls L{request_ended} when it has finished, or lost its client
        (L{cgiserve.site.Request.connectionLost}).
        """
        if request.access_started is None:
            request.access_started = self.reactor.seconds()

    def request_ended(self, request, completed: bool = True) -> None:
        """Record a request whose response has finished (or whose client has gone), once its script has ended."""
        if request.access_logged:
            return
        request.access_logged = True
        now = self.reactor.seconds()
        started = request.access_started or now
        run = request.script_run
        if run is None:
            self._hand(request_entry(request, started, now, completed))
            return
        if run.pgid is None:
            # It never started: nothing to wait for.
            why = not_started(run.refused, run.ended)
            self._hand(request_entry(request, started, now, completed, script=run.script, not_started=why))
            return

        def ended(status):
            self.waiting -= 1
            self._hand(request_entry(request, started, now, completed, **script_fields(run, status)))
            if self._closing:
                # The reactor can finish shutting down from within this
                # script's end, before this entry: close after it.
                self.close()
            return status

        self.waiting += 1
        run.done.addBoth(ended)
