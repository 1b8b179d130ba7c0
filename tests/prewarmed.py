"""Child Python processes without paying for agentlightning's third-party imports each time: a fork server.

A fresh interpreter that imports agentlightning 0.2 or 0.3 spends about 6 s of CPU, nearly all of it in litellm,
which its ``llm_proxy`` module imports; the suite starts dozens of them per tier. Here one server process per
test session imports, once, every third-party module that ``import agentlightning`` and ``lightning_attempts``'s
command line load (learned from a forked probe that imports them), but none of agentlightning's or this project's
modules. Each child is forked from it and then starts as an interpreter does: its environment, working
directory, standard streams, ``sys.argv`` and ``sys.path[0]`` are the ones asked for, and the switch's ``.pth``
line runs again, so that ``LIGHTNING_ATTEMPTS_*`` variables arm it exactly as at a real start. The child then
imports agentlightning and ours itself (0.1 s instead of 6). The server freezes what it imported out of the
garbage collector's reach (``gc.freeze()``, as the gc module's documentation advises before forking), or every
child's exit would spend 1.7 s tearing down the modules it inherited.

A child needs a really fresh interpreter, and gets one from :mod:`subprocess`, whenever the fork server could
not stand in for it: another Python, arguments other than ``-c CODE``, ``-m MODULE`` or ``SCRIPT``, start-up
options, or an environment that differs from the server's in anything but ``LIGHTNING_ATTEMPTS_*`` and
``AGL_*`` (``PYTHONPATH`` and a ``sitecustomize``, for instance, act at start-up, before any fork). Linux only;
elsewhere every child is a fresh one. What a forked child cannot have is its own process title: the
``AgentLightning-Worker-N`` names that agentlightning's trainer gives its workers (``setproctitle``) stay
``python``, so the trainer's tests, which find its workers by name, start their trainer afresh.

:func:`popen` and :func:`run` take :class:`subprocess.Popen`'s and :func:`subprocess.run`'s arguments (the subset
the tests use) and return their types: a forked child is a ``Popen`` whose pid is the program's own, so signals,
``wait``, ``communicate`` and timeouts behave as they do for any child.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

OURS = ("agentlightning", "lightning_attempts", "_lightning_attempts_")
"""Modules a child must import itself: agentlightning's and this project's (and the switch's bootstrap)."""
RUNTIME_VARIABLES = ("LIGHTNING_ATTEMPTS_", "AGL_", "PYTEST_CURRENT_TEST")
"""The only variables in which a child's environment may differ from the server's: read after start-up, by
agentlightning and this project, which the server has not imported (and pytest's name of the current test)."""
PROBE = ("agentlightning", "lightning_attempts", "lightning_attempts.cli", "lightning_attempts.server")
"""What the probe imports to learn which third-party modules to load."""
SWITCH_PTH = "lightning_attempts_install.pth"

SERVER = r'''
import json, os, signal, site, socket, sys, threading

def is_ours(name):
    return name.startswith(OURS)

def probe():
    """The third-party modules that importing PROBE loads, in the order they were first imported."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        for name in PROBE:
            __import__(name)
        names = [name for name in sys.modules if not is_ours(name) and name != "__main__"]
        with os.fdopen(write, "w") as out:
            json.dump(names, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        names = json.load(inp)
    os.waitpid(pid, 0)
    return names

for name in probe():
    try:
        __import__(name)
    except Exception:  # an alias or a module that exists only as another's attribute: its parent loaded it
        pass
import gc
gc.freeze()  # the modules' objects outlive every child: its collections and its exit need not walk them (1.7 s)
leaked = [name for name in sys.modules if is_ours(name)]
threads = threading.active_count()
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(ADDRESS)
listener.listen(16)
sys.stdout.write(json.dumps({"leaked": leaked, "threads": threads}) + "\n")
sys.stdout.flush()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the servers' waiters below reap themselves
parent = os.getppid()
listener.settimeout(2.0)

while True:
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        if os.getppid() != parent:  # the test run ended without stopping us (killed): so do we
            sys.exit(0)
        continue
    message, fds, _, _ = socket.recv_fds(connection, 1 << 22, 3)
    request = json.loads(message)
    if os.fork() == 0:  # the waiter: starts the program, reports its pid and then its exit status
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        program = os.fork()
        if program == 0:
            break
        for fd in fds:
            os.close(fd)
        connection.send(json.dumps({"pid": program}).encode())
        _, status = os.waitpid(program, 0)
        connection.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
        os._exit(0)
    connection.close()
    for fd in fds:
        os.close(fd)

# The program: start as `python ARGS` would, then run it at the top level, where an uncaught exception or
# SystemExit ends the process as it ends an interpreter's.
connection.close()
del connection, listener
if request["new_session"]:
    os.setsid()
for stream, fd in enumerate(fds):
    os.dup2(fd, stream)
    os.close(fd)
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
for directory in site.getsitepackages():
    if os.path.exists(os.path.join(directory, SWITCH_PTH)):
        site.addpackage(directory, SWITCH_PTH, set())  # what the interpreter's start ran, with this environment
kind, *arguments = request["args"]
import runpy, types
if kind == "-c":
    target, *arguments = arguments
    sys.argv = ["-c", *arguments]
    sys.path[0] = ""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(compile(target, "<string>", "exec"), main.__dict__)
elif kind == "-m":
    target, *arguments = arguments
    sys.argv = [kind, *arguments]
    sys.path[0] = os.getcwd()
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = [kind, *arguments]
    sys.path[0] = os.path.dirname(os.path.abspath(kind))
    runpy.run_path(kind, run_name="__main__")
'''


class ForkedProcess(subprocess.Popen[Any]):
    """A child forked by the fork server: the program's pid, and its exit status as the server reports it."""

    _connection: socket.socket

    def __init__(self, server: Server, args: Sequence[str], env: Mapping[str, str], **options: Any) -> None:
        self._server = server
        self._request = {"args": list(args[1:]), "env": dict(env), "cwd": str(options.pop("cwd", None) or os.getcwd())}
        super().__init__(list(args), **options)

    # The standard library's own hook for starting the child, with the pipes it has prepared.
    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: Any, pass_fds: Any, cwd: Any,  # type: ignore[override]
                       env: Any, startupinfo: Any, creationflags: Any, shell: Any, p2cread: int, p2cwrite: int,
                       c2pread: int, c2pwrite: int, errread: int, errwrite: int, *rest: Any) -> None:  # fmt: skip
        start_new_session = rest[5]  # after restore_signals, gid, gids, uid and umask, on 3.10 to 3.13
        # -1: the stream is not redirected, and the child shares this process's own, as a fresh one would.
        streams = [fd if fd != -1 else own for own, fd in enumerate((p2cread, c2pwrite, errwrite))]
        request = {**self._request, "new_session": bool(start_new_session)}
        try:
            self._connection = self._server.connect()
            socket.send_fds(self._connection, [json.dumps(request).encode()], streams)
            self.pid = json.loads(self._connection.recv(1 << 16))["pid"]
        finally:
            # The child's ends of the pipes it made (and its /dev/null), as its own _execute_child does.
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]

    def _internal_poll(self, _deadstate: Any = None, **_: Any) -> int | None:  # type: ignore[override]
        if self.returncode is None:
            self._read_status(blocking=False)
        return self.returncode

    def _wait(self, timeout: float | None) -> int:  # type: ignore[override]
        if self.returncode is None:
            try:
                self._read_status(blocking=True, timeout=timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
        assert self.returncode is not None
        return self.returncode

    def _read_status(self, *, blocking: bool, timeout: float | None = None) -> None:
        self._connection.settimeout(timeout if blocking else 0.0)
        try:
            message = self._connection.recv(1 << 16)
        except BlockingIOError:
            return
        # The waiter reports once; nothing (its end closed) means it was killed with the program.
        self.returncode = json.loads(message)["returncode"] if message else -9
        self._connection.close()


class Server:
    """The fork server: started on first use, ended when the test session's process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self.address = ""
        self.environment = {k: v for k, v in os.environ.items() if not k.startswith(RUNTIME_VARIABLES)}
        self.usable = sys.platform == "linux"

    def connect(self) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.connect(self.address)
        return connection

    def start(self) -> bool:
        """Start the server once; whether children can be forked from it."""
        with self._lock:
            if self._process is None and self.usable:
                self._process = self._spawn()
            return self.usable

    def _spawn(self) -> subprocess.Popen[str]:
        directory = tempfile.mkdtemp(prefix="prewarmed-")
        self.address = os.path.join(directory, "server")
        errors = open(os.path.join(directory, "errors"), "w+")  # noqa: SIM115 (the server's life long)
        constants = f"OURS = {OURS!r}\nPROBE = {PROBE!r}\nSWITCH_PTH = {SWITCH_PTH!r}\nADDRESS = {self.address!r}\n"
        process = subprocess.Popen(
            [sys.executable, "-c", constants + SERVER],
            env=self.environment,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,  # read only if it fails to start
            text=True,
            start_new_session=True,  # a Ctrl+C meant for the tests is not the server's
        )
        atexit.register(self._stop, process, directory)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            errors.seek(0)
            raise RuntimeError(f"the fork server did not start: {errors.read()}")
        ready = json.loads(line)
        # Forking is safe with one thread, and a child must import ours itself for the switch to be tested.
        if ready["threads"] != 1 or ready["leaked"]:
            self.usable = False
        return process

    def _stop(self, process: subprocess.Popen[str], directory: str) -> None:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)

    def can_fork(self, args: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether a child of these arguments and environment is the same, forked from here, as started afresh."""
        if len(args) < 2 or args[0] != sys.executable or (args[1].startswith("-") and args[1] not in ("-c", "-m")):
            return False
        if args[1] in ("-c", "-m") and len(args) < 3:
            return False
        keys = set(env) | set(self.environment)
        differing = {k for k in keys if env.get(k) != self.environment.get(k)}
        return all(k.startswith(RUNTIME_VARIABLES) for k in differing) and self.start()


SERVER_INSTANCE = Server()


def popen(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    text: bool = False,
    cwd: str | Path | None = None,
    start_new_session: bool = False,
) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, ...)``, forked from the fork server when that is the same as a fresh start."""
    environment = dict(os.environ if env is None else env)
    options: dict[str, Any] = dict(stdin=stdin, stdout=stdout, stderr=stderr, text=text, cwd=cwd)
    if SERVER_INSTANCE.can_fork(args, environment):
        return ForkedProcess(SERVER_INSTANCE, args, environment, start_new_session=start_new_session, **options)
    return subprocess.Popen(list(args), env=environment, start_new_session=start_new_session, **options)


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    capture_output: bool = False,
    text: bool = False,
    timeout: float | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(args, ...)`` for :func:`popen`'s children: the program's output, status, and a timeout."""
    pipe = subprocess.PIPE if capture_output else None
    started = time.monotonic()
    with popen(args, env=env, stdout=pipe, stderr=pipe, text=text, cwd=cwd) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise subprocess.TimeoutExpired(args, time.monotonic() - started) from None
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)
