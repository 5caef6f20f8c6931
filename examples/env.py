#!/usr/bin/env python3
"""Shows the CGI environment a script receives, as plain text."""
import os
import sys

print("Content-Type: text/plain; charset=utf-8")
print()
for name in sorted(os.environ):
    print(f"{name}={os.environ[name]}")
print(f"argv={sys.argv[1:]}")
