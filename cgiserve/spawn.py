# -*- test-case-name: tests.test_spawn -*-
"""Starting a script: straight into its own directory and session, without forking the server."""

from __future__ import annotations

import ctypes
import os
import platform

from twisted.internet import process

# glibc's <spawn.h> flags (stable ABI since glibc 2.26 added SETSID).
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80

# Generous upper bounds for glibc's opaque structs (80, 336 and 128 bytes
# on x86_64 and aarch64): ctypes only needs the storage.
_OPAQUE_BYTES = 1024


def _load_libc():
    """
    glibc's posix_spawn with the two extensions CGI needs, or None.

    addchdir_np (glibc 2.29) starts the script in its own directory and
    addclosefrom_np (glibc 2.34) closes every descriptor the server holds
    beyond stdio with one syscall; without them we fall back to fork.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.posix_spawn_file_actions_addchdir_np
        libc.posix_spawn_file_actions_addclosefrom_np
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def fast_spawn_available() -> bool:
    """Whether scripts start with posix_spawn rather than a fork of the server."""
    return _libc is not None


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


def posix_spawn(
    executable: bytes, argv: list[bytes], envp: list[bytes], fdmap: dict[int, int], cwd: bytes
) -> int:
    """
    Start C{executable} in a new session, in C{cwd}, with the parent's
    descriptors C{fdmap[child] = parent} and no others; return its pid.

    Failure to change directory or to execute comes back as C{OSError}
    (glibc reports exec errors to the caller), so the caller can answer
    the client at once.
    """
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attributes = ctypes.create_string_buffer(_OPAQUE_BYTES)
    signals = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(_libc.posix_spawn_file_actions_init(actions), "file actions")
    try:
        _check(_libc.posix_spawnattr_init(attributes), "attributes")
        try:
            for child, parent in sorted(fdmap.items()):
                _check(_libc.posix_spawn_file_actions_adddup2(actions, parent, child), "dup2")
            _check(_libc.posix_spawn_file_actions_addclosefrom_np(actions, len(fdmap)), "closefrom")
            _check(_libc.posix_spawn_file_actions_addchdir_np(actions, cwd), "chdir")
            # Python ignores SIGPIPE (and others); a script must start
            # with every signal at its default and none blocked.
            _libc.sigfillset(signals)
            _check(_libc.posix_spawnattr_setsigdefault(attributes, signals), "sigdefault")
            _libc.sigemptyset(signals)
            _check(_libc.posix_spawnattr_setsigmask(attributes, signals), "sigmask")
            flags = _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK
            _check(_libc.posix_spawnattr_setflags(attributes, ctypes.c_short(flags)), "flags")
            pid = ctypes.c_int()
            c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
            c_envp = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
            _check(
                _libc.posix_spawn(ctypes.byref(pid), executable, actions, attributes, c_argv, c_envp),
                os.fsdecode(executable),
            )
            return pid.value
        finally:
            _libc.posix_spawnattr_destroy(attributes)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)


class ScriptProcess(process.Process):
    """
    A child process that leads its own session and process group, so that
    a timeout or a vanished client can stop everything the script started.

    Twisted's C{Process} forks the whole server whenever the child needs a
    working directory of its own, as every CGI script does; this one uses
    glibc's posix_spawn with a chdir action instead, and falls back to
    Twisted's fork (adding C{setsid}) where that is unavailable.
    """

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment, kwargs):
        fdmap = kwargs["fdmap"]
        if _libc is None or uid is not None or gid is not None or min(fdmap.values()) < len(fdmap):
            # A pipe end sitting on a stdio number (a server started with
            # stdio closed) needs Twisted's general fd shuffling.
            return False
        self.pid = posix_spawn(
            os.fsencode(executable),
            [os.fsencode(arg) for arg in args],
            [os.fsencode(f"{name}={value}") for name, value in environment.items()],
            fdmap,
            os.fsencode(path),
        )
        self.status = -1
        return True

    def _setupChild(self, *args, **kwargs):
        os.setsid()
        super()._setupChild(*args, **kwargs)


def spawn_script(reactor, protocol, executable: str, argv: list[bytes], env: dict[str, str], cwd: str):
    """
    Start a script with C{protocol} on stdin, stdout and stderr; the
    signature of C{reactor.spawnProcess}, so a test can stand in one.
    """
    return ScriptProcess(reactor, executable, argv, env, cwd, protocol)
