"""twistd plugin: C{twistd -n cgiserve --root DIR} serves DIR and runs its scripts."""

from twisted.application.service import ServiceMaker

cgiserve = ServiceMaker(
    "cgiserve",
    "cgiserve.tap",
    "Serve a directory over HTTP, running its executable files as CGI scripts.",
    "cgiserve",
)
