#!/usr/bin/env python3
"""The tutorial's hello.py in Python 3: the url-encoded form arrives as argv[1]."""
import html
import sys
from urllib.parse import unquote_plus

qs = sys.argv[1]
POST = {}
for kv in qs.split("&"):
    k, _, v = kv.partition("=")
    POST[unquote_plus(k)] = unquote_plus(v)

name = POST.get("first_name", "")

print("Content-Type: text/html; charset=utf-8")
print()
print("<h1>Hello, {name}!</h1>".format(name=html.escape(name)))
