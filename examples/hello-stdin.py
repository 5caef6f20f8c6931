#!/usr/bin/env python3
"""The same greeting, reading the form from stdin as RFC 3875 section 4.2 says."""
import html
import os
import sys
from urllib.parse import parse_qs

length = int(os.environ.get("CONTENT_LENGTH") or 0)
form = parse_qs(sys.stdin.buffer.read(length).decode("utf-8", "replace"))
name = form.get("first_name", [""])[0]

print("Content-Type: text/html; charset=utf-8")
print()
print("<h1>Hello, {name}!</h1>".format(name=html.escape(name)))
