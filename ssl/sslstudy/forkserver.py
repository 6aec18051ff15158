"""A preloaded `sslstudy` for the many short jobs of a study run on this machine.

Every job of a local study is a new `sslstudy` process, and most of its start-up is importing torch
and the package. A Snakemake run on this machine (launch.forkserver) starts one server that imports
them once; a job's `sslstudy` command then connects to it (the socket in $SSLSTUDY_FORKSERVER) and
runs as a fork of it: the job's argv, working folder, environment and standard streams (passed as
file descriptors, so its output goes where Snakemake redirected it), and its exit status handed
back. The client forwards SIGINT/SIGTERM/SIGHUP to the fork; a client that dies (killed job) takes
its fork with it. Where no server answers, the command runs in its own process as before.

One supervisor per connection (a fork of the server) forks the worker, reports its pid and exit
status, and kills it if the client goes away; the server itself stays single-threaded, imports but
never computes (so no thread pool exists at fork time), and exits with its parent. Its jobs end with
it: a server that exits (its parent gone, even by SIGKILL, or SIGTERM) stops its supervisors, and a
supervisor stopped or killed stops its worker's process group (on Linux the kernel tells each of them
that its parent ended: prctl PR_SET_PDEATHSIG), so no trainer runs on after a killed Snakemake.

The command the server runs is named when it starts (ENTRY, "module:function", default the
`sslstudy` console script's sslstudy.cli:main): the server imports it with the preloaded modules and
each worker calls it with the job's argv, so this module imports nothing of the command layer. It
imports only the standard library (and sslstudy.cpu_line, which does too): the client side runs
before anything else.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Callable

from . import cpu_line

ENV = "SSLSTUDY_FORKSERVER"  # the socket's path, exported to the jobs
ENTRY = "sslstudy.cli:main"  # the command a job runs: the `sslstudy` console script (pyproject.toml)
PRELOAD = (
    "torch",
    "torch._dynamo",
    "numpy",
    "sslstudy.train",
    "sslstudy.launch",
    "sslstudy.config",
    "sslstudy.eval.frozen",
    "sslstudy.eval.dense",
    "sslstudy.eval.lowshot",
    "sslstudy.eval.checkpoint_clustering",
    "threadpoolctl",
)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # what Snakemake sets per job
_HEADER = struct.Struct("!Q")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILL_GRACE_S = 10  # after the client or the server is gone: SIGTERM, then SIGKILL this much later
_PR_SET_PDEATHSIG = 1  # prctl(2)


# ----------------------------------------------------------------------------- client
def run(argv: list[str], path: str | None = None) -> int | None:
    """Run `sslstudy argv` in the server at `path` (default $SSLSTUDY_FORKSERVER) and return its exit
    status; None when no server answers there (the caller runs the command itself)."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    with conn:
        umask = os.umask(0)
        os.umask(umask)
        env = {k: v for k, v in os.environ.items() if k != ENV}
        body = json.dumps(dict(argv=argv, cwd=os.getcwd(), env=env, umask=umask)).encode()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
            conn.sendall(body)
            reader = conn.makefile("r")
            pid = int(reader.readline().split()[1])
        except (OSError, ValueError, IndexError):
            return None  # the server went away before it started the command: run it here
        previous = {s: signal.signal(s, lambda signum, frame: _forward(pid, signum)) for s in _FORWARDED}
        try:
            line = reader.readline()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    if not line.startswith("exit "):
        print(f"sslstudy: the fork server's worker {pid} ended without a status", file=sys.stderr)
        return 1
    _, code, cpu = line.split()
    print(cpu_line.LINE.format(cpu=float(cpu)), file=sys.stderr)  # Snakemake's benchmark counts this process only
    return int(code)


def _forward(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:  # not yet its own group
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- server
def serve(path: str, entry: str = ENTRY, preload: tuple[str, ...] = PRELOAD, poll_s: float = 1.0) -> None:
    """Import `preload` and the command `entry` ("module:function", called with a job's argv, returning
    its exit status), listen at `path`, fork a supervisor per connection; return when the parent
    process (the Snakemake that started it) has ended, removing the socket."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    module, _, function = entry.partition(":")
    command = getattr(importlib.import_module(module), function)
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the finally below runs
    tmp = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # clients see the socket only once it listens
    children: set[int] = set()
    try:
        while os.getppid() == parent:
            if select.select([listener], [], [], poll_s)[0]:
                conn, _ = listener.accept()
                server = os.getpid()
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    _supervise(conn, command, server)  # never returns
                conn.close()
                children.add(pid)
            for pid in list(children):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        for pid in children:  # each stops its worker (see _wait)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _die_with(parent: int) -> None:
    """SIGTERM to this process when `parent` (the process that forked it) ends (Linux: prctl
    PR_SET_PDEATHSIG; elsewhere the server's SIGTERM to its supervisors still applies); exits at once
    if it has already ended."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(conn: socket.socket, command: Callable[[list[str]], int], server: int) -> None:
    """In a fork of the server: read one request, fork its worker, report pid and exit status."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until its worker runs (then _wait's handler)
        _die_with(server)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ConnectionError("client went away")
            body += chunk
        request = json.loads(body)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            conn.close()
            _die_with(supervisor)
            _work(request, fds, command)  # never returns
        for fd in fds:
            os.close(fd)
        conn.sendall(f"pid {pid}\n".encode())
        ended = _wait(pid, conn)
        if ended is not None:
            conn.sendall("exit {} {:.3f}\n".format(*ended).encode())
    except Exception:  # noqa: BLE001 - the client then runs nothing and reports a missing status
        code = 1
    finally:
        os._exit(code)


class _ServerGone(Exception):
    """SIGTERM to a supervisor: its server ended (or was told to); its worker must end too."""


def _server_gone(signum, frame):
    # once: the server's own SIGTERM and PR_SET_PDEATHSIG's both come, and a second one raised outside
    # the wait below would lose the worker's status
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _ServerGone


def _wait(pid: int, conn: socket.socket) -> tuple[int, float] | None:
    """The worker's exit status (128 + N when signal N ended it) and CPU seconds (its own and its
    waited-for children's); None if the client went away first: the worker's group is then terminated.
    When the server goes (SIGTERM), the worker's group gets SIGTERM, then SIGKILL after KILL_GRACE_S,
    and its status goes to the client as usual."""
    exited = os.pidfd_open(pid)
    kill_at = None  # once the server went: when to SIGKILL a worker still running (None again once sent)
    stopping = False
    signal.signal(signal.SIGTERM, _server_gone)
    while True:
        try:
            wait_s = None if kill_at is None else max(0.0, kill_at - time.time())
            ready = select.select([conn, exited], [], [], wait_s)[0]
            if exited in ready:
                _, wait_status, usage = os.wait4(pid, 0)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nothing left to stop: the status goes out whole
                return _status(wait_status), usage.ru_utime + usage.ru_stime
        except _ServerGone:
            if not stopping:
                stopping, kill_at = True, time.time() + KILL_GRACE_S
                _forward(pid, signal.SIGTERM)
            continue
        if conn in ready and not conn.recv(1):  # the client is gone (its job was killed): so goes the worker
            _terminate(pid)
            return None
        if kill_at is not None and time.time() >= kill_at:
            _forward(pid, signal.SIGKILL)
            kill_at = None


def _status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _terminate(pid: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping it: a server going away changes nothing
    _forward(pid, signal.SIGTERM)
    deadline = time.time() + KILL_GRACE_S
    while time.time() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.1)
    _forward(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _work(request: dict, fds: list[int], command: Callable[[list[str]], int]) -> None:
    """In the worker: become the client's process (streams, folder, environment, threads) and run its
    command."""
    code = 1
    try:
        os.setpgid(0, 0)  # the client forwards signals to this group (the command's own subprocesses too)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a new interpreter decides for its stdout
        for s in _FORWARDED + (signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a new interpreter
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # chosen again from this environment (TMPDIR)
        _threads_as_in_a_new_process()
        sys.argv = ["sslstudy", *request["argv"]]
        code = command(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - printed as an uncaught exception would be
        import traceback

        traceback.print_exc()
        code = 128 + signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    finally:
        _exit(code)


def _threads_as_in_a_new_process() -> None:
    """A new process takes its thread counts from the environment at start-up; the server took its
    own (1). Give torch, faiss and the BLAS pools what this job's environment says."""
    import torch
    from threadpoolctl import threadpool_limits

    def count(var: str, default: int) -> int:
        v = os.environ.get(var, "")
        return int(v) if v.isdigit() and int(v) > 0 else default

    n = count("OMP_NUM_THREADS", len(os.sched_getaffinity(0)))
    torch.set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
    threadpool_limits(count("OPENBLAS_NUM_THREADS", n), user_api="blas")


def _exit(code: int) -> None:
    """End the worker as the interpreter would: exit handlers, flushed streams, then the status."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


# ----------------------------------------------------------------------------- from Snakemake
def start(log: str, entry: str = ENTRY, wait_s: float = 120) -> str | None:
    """Start a server running `entry` for this process's jobs (a child that exits when this process
    does), wait until it listens, and export its socket's path, which it returns; None (nothing
    exported: the jobs run in their own processes) if it ended or did not listen within wait_s (its
    log says why)."""
    import subprocess
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="sslstudy-forkserver-"), "socket")
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})  # a 1-thread job's environment: no idle pools
    env.pop(ENV, None)
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "ab") as err:
        # its own session: a Ctrl-C reaches the clients, which forward it, not the server and supervisors
        proc = subprocess.Popen(
            [sys.executable, "-m", "sslstudy.forkserver", path, entry],
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.time() + wait_s
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            return None
        time.sleep(0.05)
    os.environ[ENV] = path
    return path


if __name__ == "__main__":
    status = 0
    try:
        serve(*sys.argv[1:3])  # the socket's path and, if given, the entry point
    except SystemExit as e:  # SIGTERM
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - into the server's log
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        try:
            os.rmdir(os.path.dirname(sys.argv[1]))  # start()'s folder, empty now
        except OSError:
            pass
        sys.stderr.flush()
        os._exit(status)  # no interpreter shutdown: with torch loaded it takes seconds, and the server holds no state
