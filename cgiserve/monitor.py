# -*- test-case-name: tests.test_e2e_metrics -*-
"""The --metrics listener's site: Prometheus' /metrics and the operator's /status page, never the public site."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from twisted.logger import Logger
from twisted.web import pages, resource, server

from cgiserve import status

_INDEX = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>cgiserve</title></head>'
    b'<body><p><a href="status">status</a>, <a href="metrics">metrics</a></p></body></html>\n'
)

# Nothing on these pages is to be cached, framed or run as anything but what it is.
_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
)


class _Figures(resource.Resource):
    """A page made of what the source's C{gather} gathers, which may take a while (a master asks its workers)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, source) -> None:
        super().__init__()
        self.source = source

    def render_GET(self, request):
        for name, value in _HEADERS:
            request.setHeader(name, value)
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer(figures):
            if gone:
                return
            content_type, body = self.page(request, figures)
            request.setHeader(b"Content-Type", content_type)
            request.write(body)
            request.finish()

        def failed(failure):
            self._log.failure("Cannot gather the figures for {path}", failure, path=request.path)
            if not gone:
                request.setResponseCode(500)
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                request.write(b"The figures could not be gathered; see the server log.\n")
                request.finish()

        self.source.gather().addCallback(answer).addErrback(failed)
        return server.NOT_DONE_YET


class MetricsPage(_Figures):
    """/metrics: the Prometheus text format (or OpenMetrics, when the scraper's Accept asks for it)."""

    def page(self, request, figures):
        encoder, content_type = choose_encoder((request.getHeader(b"accept") or b"").decode("latin-1"))
        return content_type.encode("ascii"), encoder(figures)


class StatusPage(_Figures):
    """/status: HTML for an operator's browser, refreshed every few seconds; C{?format=json} gives the same data."""

    def page(self, request, figures):
        data = figures.status()
        if request.args.get(b"format") == [b"json"]:
            return b"application/json", status.render_json(data)
        return b"text/html; charset=utf-8", status.render_html(data)


class _Index(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        for name, value in _HEADERS:
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _INDEX


class _Root(resource.Resource):
    def __init__(self, source) -> None:
        super().__init__()
        self.putChild(b"", _Index())
        self.putChild(b"metrics", MetricsPage(source))
        self.putChild(b"status", StatusPage(source))

    def getChild(self, path, request):
        return pages.notFound()


class MonitorSite(server.Site):
    """The metrics listener's site: its requests are not logged (a scraper's every 15 s would only be noise)."""

    def __init__(self, source, reactor=None) -> None:
        super().__init__(_Root(source), reactor=reactor)

    def logPrefix(self) -> str:
        return "Metrics"

    def log(self, request) -> None:
        pass
