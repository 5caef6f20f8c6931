"""Tests for cgiserve.sendfile.target: which files an X-Sendfile header may name, on real files under tmp_path."""

from __future__ import annotations

import os

import pytest

from cgiserve.sendfile import Refused, target


@pytest.fixture
def dirs(tmp_path):
    """Two --sendfile-dir directories (real paths) with files, a dot-directory, and things outside them."""
    root = os.path.realpath(tmp_path)
    first, second, outside = (os.path.join(root, name) for name in ("dl", "more", "outside"))
    for directory in (first, second, outside, os.path.join(first, "sub"), os.path.join(first, ".git")):
        os.mkdir(directory)
    for path in ("dl/a.bin", "dl/sub/b.txt", "dl/.env", "dl/.git/config", "more/c.txt", "outside/secret"):
        with open(os.path.join(root, path), "w") as f:
            f.write(path)
    os.symlink(os.path.join(outside, "secret"), os.path.join(first, "escape"))
    os.symlink(os.path.join(second, "c.txt"), os.path.join(first, "across"))
    os.symlink(os.path.join(first, ".env"), os.path.join(first, "hidden-link"))
    os.symlink(os.path.join(first, "a.bin"), os.path.join(outside, "link-in"))
    return root, (first, second)


@pytest.mark.parametrize("name", ["dl/a.bin", "dl/sub/b.txt", "more/c.txt", "dl/sub/../a.bin"])
def test_a_file_under_a_directory_is_sent(dirs, name):
    """A regular file under one of the directories gives its real path."""
    root, directories = dirs
    path = os.path.join(root, name)
    assert target(os.fsencode(path), directories) == os.path.realpath(path)


def test_a_symlink_to_another_of_the_directories_is_followed(dirs):
    """A symlink from one directory into another is sent as its target."""
    root, directories = dirs
    assert target(os.fsencode(os.path.join(root, "dl/across")), directories) == os.path.join(root, "more/c.txt")


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("outside/secret", 502, "outside every --sendfile-dir"),
        ("dl/../outside/secret", 502, "outside every --sendfile-dir"),
        ("outside/link-in", 502, "outside every --sendfile-dir"),
        ("dl/escape", 502, "a symlink out of every --sendfile-dir"),
        ("dl/.env", 502, "a dotfile"),
        ("dl/.git/config", 502, "a dotfile"),
        ("dl/hidden-link", 502, "a symlink to a dotfile"),
        ("dl/missing.bin", 404, "no such file"),
        ("dl/a.bin/x", 404, "no such file"),
        ("dl/sub", 502, "not a regular file"),
        ("dl", 502, "outside every --sendfile-dir"),
    ],
)
def test_refused(dirs, name, status, reason):
    """Outside the directories, out of them by a symlink, a dotfile, missing, not a file: refused, saying why."""
    root, directories = dirs
    with pytest.raises(Refused) as refused:
        target(os.fsencode(os.path.join(root, name)), directories)
    assert (refused.value.status, refused.value.reason) == (status, reason)


def test_a_relative_path_is_refused(dirs):
    """The header must name an absolute path."""
    _, directories = dirs
    with pytest.raises(Refused) as refused:
        target(b"dl/a.bin", directories)
    assert (refused.value.status, refused.value.reason) == (502, "not an absolute path")
