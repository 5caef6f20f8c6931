# -*- test-case-name: tests.test_e2e_static -*-
"""The resource tree: a directory's files served as they are, its scripts run, its secrets never shown."""

from __future__ import annotations

import os
import stat

from twisted.logger import Logger
from twisted.web import pages, static
from twisted.web.http import OK

from cgiserve.config import ServerConfig
from cgiserve.script import CGIScript
from cgiserve.runner import ScriptRunner

_STATIC_METHODS = (b"GET", b"HEAD")

# Extensions that suggest a file was meant to run; a POST to one that is
# not executable gets a hint in the log.
_SCRIPT_EXTENSIONS = frozenset({".py", ".cgi", ".sh", ".pl", ".php", ".rb"})


def method_not_allowed(request):
    """405 for any method but GET and HEAD (Twisted itself answers 501 for methods it does not know)."""
    request.setHeader(b"Allow", b"GET, HEAD")
    return pages.errorPage(405, "Method Not Allowed", "Only GET and HEAD are allowed here.").render(request)


# Twisted sends every file through a pull producer, one cooperator turn
# per 64 KiB chunk; a file that fits in one chunk goes out in one write.
SMALL_FILE_BYTES = 64 * 1024


class WholeFileProducer(static.StaticProducer):
    """Sends a small file in one write and finishes the request."""

    def __init__(self, request, fileObject, size: int):
        super().__init__(request, fileObject)
        self.size = size

    def start(self):
        request = self.request
        # No more than the Content-Length already set, should the file grow.
        data = self.fileObject.read(self.size)
        self.stopProducing()
        request.write(data)
        request.finish()


class Listing(static.DirectoryLister):
    """A directory listing, for GET and HEAD only."""

    def render(self, request):
        if request.method not in _STATIC_METHODS:
            return method_not_allowed(request)
        return super().render(request)


class DocumentRoot(static.File):
    """
    A file or directory under the document root.

    Children that are executable regular files (or whose extension has an
    interpreter) become L{CGIScript}s; other regular files and directories
    are served by L{static.File}. Dotfiles, files the server writes itself,
    symlinks leading out of the root and special files do not exist here.
    """

    _log = Logger()
    childNotFound = pages.notFound()

    def __init__(self, path: str, config: ServerConfig, runner: ScriptRunner):
        super().__init__(path, defaultType="application/octet-stream")
        self.config = config
        self.indexNames = list(config.index_names)
        self.runner = runner

    def createSimilarFile(self, path):
        return self.__class__(path, self.config, self.runner)

    def getChild(self, path, request):
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        # The Site hands over decoded, normalised segments; dotfiles stay hidden.
        if name.startswith(".") or os.sep in name or "\0" in name:
            return self.childNotFound
        if name:
            # A parent that is gone or not a directory fails the child's
            # lstat (ENOENT, ENOTDIR): no need to stat the parent first.
            return self.resource_for(os.path.join(self.path, name))
        self.restat(reraise=False)
        if not self.isdir():
            return self.childNotFound
        index = self.childSearchPreauth(*self.indexNames)
        if index is not None:
            return self.resource_for(index.path)
        if self.config.listing:
            return self.directoryListing()
        return pages.forbidden("Forbidden", "Directory listing is off.")

    def resource_for(self, path: str):
        """The resource for a path in this directory: a script, a static file, or not found."""
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                path = os.path.realpath(path)
                if not self.inside_root(path):
                    return self.childNotFound
                mode = os.stat(path).st_mode
        except OSError:
            return self.childNotFound
        if path in self.config.hidden:
            return self.childNotFound
        if stat.S_ISDIR(mode):
            return self.createSimilarFile(path)
        if not stat.S_ISREG(mode):
            return self.childNotFound
        interpreter = self.config.interpreters.get(os.path.splitext(path)[1])
        if (interpreter is not None or os.access(path, os.X_OK)) and self.config.may_run(path):
            return CGIScript(path, self.config, interpreter, self.runner)
        return self.createSimilarFile(path)

    def inside_root(self, real: str) -> bool:
        """Whether a real path lies strictly inside the root, through no dot-directory."""
        root = self.config.root
        if not real.startswith(root + os.sep):
            return False
        return not any(part.startswith(".") for part in real[len(root) + 1 :].split(os.sep))

    def makeProducer(self, request, fileForReading):
        size = self.getFileSize()
        if request.getHeader(b"range") is None and size <= SMALL_FILE_BYTES:
            self._setContentHeaders(request, size)
            request.setResponseCode(OK)
            return WholeFileProducer(request, fileForReading, size)
        return super().makeProducer(request, fileForReading)

    def listNames(self):
        return [
            name
            for name in super().listNames()
            if not name.startswith(".") and os.path.join(self.path, name) not in self.config.hidden
        ]

    def directoryListing(self):
        return Listing(self.path, self.listNames(), self.contentTypes, self.contentEncodings, self.defaultType)

    def render(self, request):
        if request.method in _STATIC_METHODS:
            return super().render(request)
        if self.isfile() and os.path.splitext(self.path)[1] in _SCRIPT_EXTENSIONS:
            if not self.config.may_run(self.path):
                hint = "which is outside every --cgi-dir"
            else:
                hint = "which is not executable: chmod +x it to run it as a script"
            self._log.info(
                "[{request_id}] {method} to {path}, {hint}",
                request_id=request.request_id,
                method=request.method.decode("ascii", "replace"),
                path=self.path,
                hint=hint,
            )
        return method_not_allowed(request)
