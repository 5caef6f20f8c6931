# -*- test-case-name: tests.test_e2e_static -*-
"""The resource tree: a directory's files served as they are, its scripts run, its secrets never shown."""

from __future__ import annotations

import os
import stat

from twisted.logger import Logger
from twisted.web import pages, resource, static
from twisted.web.http import OK

from cgiserve.config import ServerConfig
from cgiserve.script import CGIScript
from cgiserve.runner import ScriptRunner

_STATIC_METHODS = (b"GET", b"HEAD")

# As with Apache's "AddHandler cgi-script .cgi": such a file is meant to
# run, so it is never served as a static file (the classic source leak).
_CGI_EXTENSION = ".cgi"

# Other extensions that suggest a file was meant to run. Such a file that
# cannot run is static, as in Apache; a POST to it gets a hint in the log.
_SCRIPT_EXTENSIONS = frozenset({".py", ".sh", ".pl", ".php", ".rb"})


def method_not_allowed(request):
    """405 for any method but GET and HEAD (Twisted itself answers 501 for methods it does not know)."""
    request.setHeader(b"Allow", b"GET, HEAD")
    return pages.errorPage(405, "Method Not Allowed", "Only GET and HEAD are allowed here.").render(request)


# Directory resources kept for requests to pass through (DocumentRoot.directory).
MAX_DIRECTORIES = 1024

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


class _Unrunnable(resource.Resource):
    """A script that cannot run: 403 for every method, never its source; logged when rendered, not when looked up."""

    isLeaf = True

    def __init__(self, directory: "DocumentRoot", path: str) -> None:
        super().__init__()
        self.directory = directory
        self.path = path

    def render(self, request):
        self.directory.log_not_run(request, 403, self.path)
        return pages.forbidden("Forbidden", "This script cannot run.").render(request)


class DocumentRoot(static.File):
    """
    A file or directory under the document root.

    Children that are executable regular files (or whose extension has an
    interpreter) become L{CGIScript}s; other regular files and directories
    are served by L{static.File}, except that a C{.cgi} file, or any
    regular file under a C{--cgi-dir}, that cannot run gets 403 rather
    than its source. Outside every C{--cgi-dir} nothing runs, as in
    Apache. Dotfiles, files the server writes itself, symlinks leading out
    of the root and special files do not exist here.
    """

    _log = Logger()
    childNotFound = pages.notFound()

    def __init__(self, path: str, config: ServerConfig, runner: ScriptRunner, registry=None, directories=None):
        super().__init__(path, defaultType="application/octet-stream", registry=registry)
        self.config = config
        self.indexNames = list(config.index_names)
        self.runner = runner
        # The tree's directory resources by path (L{directory}).
        self.directories: dict[str, DocumentRoot] = {} if directories is None else directories

    def createSimilarFile(self, path):
        # One Registry for the whole tree, as in Twisted's own File, not one per directory a request passes.
        return self.__class__(path, self.config, self.runner, self.registry, self.directories)

    def directory(self, path: str) -> "DocumentRoot":
        """
        The resource for the directory at C{path}, which has just been
        lstat'ed as one: made once rather than for every request through it.
        It holds nothing of a request's, and restats itself before it
        answers for itself (its index, its listing); bounded in number.
        """
        found = self.directories.get(path)
        if found is None:
            if len(self.directories) >= MAX_DIRECTORIES:
                self.directories.clear()
            found = self.directories[path] = self.createSimilarFile(path)
        return found

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
            return self.directory(path)
        if not stat.S_ISREG(mode):
            return self.childNotFound
        extension = os.path.splitext(path)[1]
        if not self.config.may_run(path):
            return _Unrunnable(self, path) if extension == _CGI_EXTENSION else self.createSimilarFile(path)
        interpreter = self.config.interpreters.get(extension)
        if interpreter is not None or os.access(path, os.X_OK):
            return CGIScript(path, self.config, interpreter, self.runner)
        # With --cgi-dir given, a file that may run lies in a script directory.
        if extension == _CGI_EXTENSION or self.config.cgi_dirs:
            return _Unrunnable(self, path)
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
            self.log_not_run(request, 405, self.path)
        return method_not_allowed(request)

    def log_not_run(self, request, status: int, path: str) -> None:
        """Log the one line saying why the file at C{path}, which looks like a script, did not run, and the fix."""
        if not self.config.may_run(path):
            hint = "outside every --cgi-dir: move it into one to run it as a script"
        else:
            hint = "not executable: chmod +x it to run it as a script"
        self._log.info(
            "[{request_id}] {status} for {method} {path}: {hint}",
            request_id=request.request_id,
            status=status,
            method=request.method.decode("ascii", "replace"),
            path=path,
            hint=hint,
        )
