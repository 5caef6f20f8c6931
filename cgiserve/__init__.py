"""cgiserve: a CGI web server daemon built on Twisted."""

__version__ = "0.1.0"
