"""The warm trainer: one process per sweep that has imported torch and forks each single-process trial.

A fresh `python -m trainer` spends ~2 s importing torch and its compiler before its first step, which
is most of a short trial's cost. The local launcher instead starts this process once (it imports
while the launcher sets up the store) and asks it for each trial; the trial is a fork of it, so it
starts with everything imported. What a trial sees is what a fresh process would see:
- its own session (the launcher's Ctrl-C handling kills it by process group) and SIGTERM when the
  warm process dies, which dies with the launcher (the same chain as PR_SET_PDEATHSIG on a Popen);
- the trial's lock and log as inherited descriptors (passed over the socket), stdin from /dev/null;
- the trial's environment and working directory. Only variables that nothing reads before the first
  step may differ from the warm process's own (PER_TRIAL_ENV); a trial whose environment differs in
  anything else (say TORCHINDUCTOR_*, which torch reads at import) starts as a fresh process.
The warm process runs no torch op, starts no thread and never initializes the CUDA driver (it checks
after its imports and before each fork; torch.cuda.is_available() goes through NVML there). If importing the
compiler (torch._dynamo, inductor) makes it unsafe to fork, it starts again without those imports and
the trials import them themselves; if torch alone does, trials start fresh and the launcher says why.
Multi-rank trials (torchrun) always start fresh.

Messages are JSON datagrams on a SOCK_SEQPACKET pair: launcher -> warm: {"argv", "env", "cwd"} with
the log and lock descriptors; warm -> launcher: {"ready"}, {"started": pid} and {"exited": pid,
"code": c} (c as Popen.returncode: negative for a signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PER_TRIAL_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "GATESWEEP_TRACKING", "GATESWEEP_SYNC_TIMEOUT",
                           "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"})
TRAINER_MODULES = ("trainer.main", "trainer.dist", "trainer.build", "trainer.loop")
MAX_MSG = 1 << 20


SPARE_CPUS = 8  # cores from which a fresh first trial and the warm process's imports do not slow each other


def first_trial_waits(use_gpus: bool, cpus: int | None) -> bool:
    """Whether the launcher waits for the warm process before its first trial. On a GPU machine with cores
    to spare it does not: the first trial starts fresh at once (its imports overlap the warm process's,
    which on an H200 took ~14 s: torch, the compiler, then torch again without it), so the card trains
    ~8 s sooner, and the later trials are forked. On a small CPU machine the two would share the cores."""
    return not (use_gpus and (cpus or 1) >= SPARE_CPUS)


def same_start_env(warm: dict[str, str], trial: dict[str, str]) -> bool:
    """A trial may be forked from a warm process started with `warm` only if their environments agree
    on everything but PER_TRIAL_ENV (torch reads the rest, e.g. TORCHINDUCTOR_*, OMP_*, at import)."""
    keys = (set(warm) | set(trial)) - PER_TRIAL_ENV
    return all(warm.get(k) == trial.get(k) for k in keys)


class WarmError(RuntimeError):
    """The warm process cannot start this trial; the launcher starts it as a fresh process."""


def _send(sock: socket.socket, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


class WarmTrainer:
    """Launcher side: start the warm process, hand it trials, collect their exit codes."""

    def __init__(self, env: dict[str, str], python: str = sys.executable):
        import functools

        from cluster.common.process import die_with_parent

        self.env = dict(env)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [python, "-m", "cluster.local.warm", str(theirs.fileno())], env=self.env, pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))
        theirs.close()
        self.sock.setblocking(False)
        self.ready = False
        self.alive = True
        self.why = ""  # the warm process's reason not to fork (ready: false) or what it left out (a note)
        self.codes: dict[int, int] = {}
        self._started: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        """Read every message waiting; the socket's end means the warm process is gone."""
        while self.alive:
            try:
                data = self.sock.recv(MAX_MSG)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.alive = self.ready = False
                return
            msg = json.loads(data)
            if "ready" in msg:
                self.ready = bool(msg["ready"])
                self.why = str(msg.get("why") or msg.get("note") or "")
                if self.why:  # e.g. imports that loaded the CUDA driver or started threads on a GPU machine
                    from trainer.console import note

                    note(f"note: warm trainer: {'forks trials; ' if self.ready else 'trials start fresh: '}{self.why}",
                         err=True)
            elif "started" in msg:
                self._started.append(int(msg["started"]))
            elif "exited" in msg:
                self.codes[int(msg["exited"])] = int(msg["code"])
            elif "error" in msg:
                self._started.append(-1)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the warm process has imported (or gone). A trial started fresh meanwhile would
        spend the same seconds on the same imports, competing with it for the CPU (see first_trial_waits)."""
        deadline = time.monotonic() + timeout
        while self.alive and not self.ready and time.monotonic() < deadline:
            select.select([self.sock], [], [], min(0.5, max(deadline - time.monotonic(), 0)))
            self.pump()
        return self.ready

    def accepts(self, env: dict[str, str]) -> bool:
        """Ready, and `env` differs from the warm process's own only in what a trial may set itself."""
        self.pump()
        return self.ready and self.alive and same_start_env(self.env, env)

    def start(self, argv: list[str], env: dict[str, str], cwd: str, fds: tuple[int, int],
              timeout: float = 10.0) -> WarmProc:
        """Fork a trial: `python -m trainer *argv` with stdout/stderr on fds[0] and fds[1] inherited."""
        try:
            _send(self.sock, {"argv": argv, "env": env, "cwd": cwd}, fds)
        except OSError as e:
            self.alive = self.ready = False
            raise WarmError(f"warm trainer unreachable ({e})") from e
        deadline = time.monotonic() + timeout
        while not self._started:
            self.pump()
            if not self.alive:
                raise WarmError("warm trainer exited")
            if time.monotonic() > deadline:
                raise WarmError(f"warm trainer did not answer in {timeout:.0f} s")
            select.select([self.sock], [], [], 0.1)
        pid = self._started.pop(0)
        if pid < 0:
            raise WarmError("warm trainer refused to fork")
        return WarmProc(self, pid)

    def close(self, timeout: float = 5.0) -> None:
        """End the warm process (it exits when its socket closes); trials it started are not touched."""
        with contextlib.suppress(OSError):
            self.sock.close()
        self.alive = self.ready = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WarmProc:
    """A trial forked by the warm process, with the parts of subprocess.Popen the runner uses."""

    def __init__(self, warm: WarmTrainer, pid: int):
        self.warm, self.pid = warm, pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # gone already: its exit message is on the way
            self._pidfd = None

    def wait_fd(self) -> int | None:
        """What turns readable when this trial may have ended: the warm process's socket (it reports
        exits), or the trial's own pidfd once the warm process is gone."""
        return self.warm.fileno() if self.warm.alive else self._pidfd

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self.warm.pump()
        code = self.warm.codes.pop(self.pid, None)
        if code is None and not self.warm.alive and self._gone():
            code = 1  # its parent died before it: the exit code is lost (its status file says what happened)
        if code is not None:
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return code

    def _gone(self) -> bool:
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"trial pid {self.pid}", timeout or 0)
            fd = self.wait_fd()
            if fd is None:
                time.sleep(0.05)
            else:
                select.select([fd], [], [], 0.5 if left is None else min(left, 0.5))
        return code


# ---- the warm process ------------------------------------------------------------------------------

def serve(sock_fd: int, without_compiler: str = "") -> None:
    """without_compiler: why an earlier start of this process had to drop the compiler's imports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C; its death reaches us as SIGTERM
    sock = socket.socket(fileno=sock_fd)
    import importlib

    from trainer.startup import COMPILE_MODULES  # what a trainer imports before its first step

    # torch.cuda.is_available() through NVML, so that no import creates the CUDA driver here (a forked
    # child could not use it); the trials get their own environment back
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    # numpy's OpenBLAS starts a thread per core when loaded (15 idle threads on a 16-core GPU machine), and
    # a process with threads must not fork; the trainer never calls numpy's BLAS (torch has its own)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    for name in ("torch", *TRAINER_MODULES):
        importlib.import_module(name)
    if not (why := _unsafe_to_fork()) and not without_compiler:
        for name in COMPILE_MODULES:
            importlib.import_module(name)
        if dropped := _unsafe_to_fork():  # start again without them: forked trials import them themselves
            sock.set_inheritable(True)
            os.execv(sys.executable, [sys.executable, "-m", "cluster.local.warm", str(sock_fd),
                                      f"after importing the compiler: {dropped}"])
    if why:
        _send(sock, {"ready": False, "why": why})
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send(sock, {"ready": True} | ({"note": f"compiler not preloaded ({without_compiler})"} if without_compiler else {}))
    while True:
        readable = select.select([sock, wake_r], [], [])[0]
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock in readable:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MSG, 2)
            if not data:
                return  # the launcher closed the socket (or died): trials keep running, we go
            req = json.loads(data)
            try:
                _send(sock, {"started": _fork(req, fds, close=(sock.fileno(), wake_r, wake_w))})
            except Exception as e:  # noqa: BLE001 - the launcher falls back to a fresh process
                _send(sock, {"error": f"{type(e).__name__}: {e}"})
            finally:
                for fd in fds:
                    os.close(fd)
        _reap(sock)


def _unsafe_to_fork() -> str:
    """Why this process must not fork trials ('' if it may): a second thread could hold a lock the child
    copies; an initialized CUDA driver cannot be used again in a forked child. Only initialization
    counts: on a GPU machine `import torch` maps libcuda.so (seen on an H200, torch 2.11) without
    initializing it, which a child may do itself; cuInit starts the driver's own threads, and torch's
    lazy init is visible to torch.cuda.is_initialized()."""
    tasks = os.listdir("/proc/self/task")
    if len(tasks) != 1:
        return f"{len(tasks)} threads after imports ({', '.join(_thread_names(tasks))})"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialized"
    return ""


def _thread_names(tasks: list[str]) -> list[str]:
    """The kernel's names of this process's threads (what started them, for the launcher's note)."""
    names = []
    for tid in sorted(tasks, key=int):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:  # ended meanwhile
            continue
    return names


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(req: dict[str, Any], fds: list[int], close: tuple[int, ...]) -> int:
    if why := _unsafe_to_fork():
        raise RuntimeError(why)
    if len(fds) != 2:
        raise RuntimeError(f"expected the log and lock descriptors, got {len(fds)}")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the trial: nothing here may return into the serve loop
        _become_trial(req, fds, close, parent)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(1)


def _become_trial(req: dict[str, Any], fds: list[int], close: tuple[int, ...], parent: int) -> None:
    from cluster.common.process import die_with_parent

    os.setsid()
    die_with_parent(parent)  # SIGTERM when the warm process dies; gone already: exit, resumable
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log, _lock = fds  # the lock stays open (and held) for the trial's life
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.argv = ["-m trainer", *req["argv"]]
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from trainer.main import exit_process, main

    try:
        code = main(list(req["argv"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    exit_process(int(code))


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
    os._exit(0)  # torch's interpreter teardown costs ~0.7 s and writes nothing
