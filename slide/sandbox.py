"""Run untrusted Python (model-written code) in a bubblewrap sandbox; every failure comes back as data.

    result = run_python("print(input()[::-1])", stdin="abc", limits=Limits(wall_s=2))
    result.status, result.stdout                       # ("ok", "cba\\n")
    observation(result)                                # what an agent sees

Isolation (bwrap): new user, pid, net, ipc, uts and mount namespaces; the filesystem is a read-only
/usr (plus /lib, /lib64, /bin links and the interpreter's prefix), /proc and a minimal /dev; the only
writable place is a size-capped tmpfs at /tmp, the working directory. No network, no environment
variables but PATH/HOME/LANG, no view of /work, /root, /home or the caller's files.

Limits: rlimits (CPU, address space, file size, processes) are set inside the sandbox by a tiny wrapper
that then execs the code, and the caller kills the whole sandbox at `wall_s` or when output passes
`output_bytes`. RLIMIT_NPROC is never enforced for uid 0 (the kernel exempts root outright), so a root
caller starts bwrap as the unprivileged uid 65534; the limit is then counted per sandbox, because each
sandbox has its own user namespace. A uid 65534 sandbox cannot open a private interpreter (e.g. pyenv
under /root, mode 0700), so then it uses /usr/bin/python3.
"""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
# ok: exit code 0.  error: non-zero exit (an exception, sys.exit(n), a file-size or process limit hit).
# timeout: past wall_s, or past cpu_s (SIGXCPU).  memory: MemoryError (past memory_mb).
# output_limit: stdout + stderr passed output_bytes.  killed: died of another signal (segfault, abort).

_SANDBOX_UID = 65534  # "nobody": the uid a root caller drops to, so that RLIMIT_NPROC applies
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin")
_CODE_PATH = "/tmp/main.py"
_CHUNK = 65536  # bytes per pipe read
_REAP_S = 2.0  # seconds we wait, after a kill, for the kernel to empty the sandbox's pid namespace
_INSTALL = "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap)"

# Runs first inside the sandbox: set the rlimits, then become the user's program. Setting them here,
# not on bwrap, makes RLIMIT_NPROC count only this sandbox's user namespace.
_WRAPPER = """\
import os, resource as r, sys
cpu, mem, nproc, fsize = map(int, sys.argv[1:5])
for k, v in ((r.RLIMIT_CPU, (cpu, cpu + 1)), (r.RLIMIT_AS, (mem, mem)), (r.RLIMIT_NPROC, (nproc, nproc)),
             (r.RLIMIT_FSIZE, (fsize, fsize)), (r.RLIMIT_CORE, (0, 0))):
    r.setrlimit(k, v)
os.execv(sys.executable, [sys.executable, "-I", sys.argv[5]])
"""


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot start a sandbox on this machine; the message says what to install or allow."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0  # wall-clock seconds, from start to kill (the whole sandbox goes)
    cpu_s: int = 5  # CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 512  # address space per process, MiB (RLIMIT_AS): MemoryError past it
    processes: int = 32  # processes + threads in the sandbox (RLIMIT_NPROC): fork fails past it
    output_bytes: int = 65536  # stdout + stderr bytes kept; one more kills the run (status output_limit)
    file_mb: int = 16  # MiB: the largest file one may write (RLIMIT_FSIZE) and the whole of /tmp

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)!r}" for k in ("wall_s", "cpu_s", "memory_mb", "processes",
                                                     "output_bytes", "file_mb") if not getattr(self, k) > 0]
        if bad:
            raise ValueError(f"sandbox limits must be positive: {', '.join(bad)}")


@dataclass(frozen=True)
class SandboxResult:
    stdout: str  # decoded UTF-8 (bad bytes replaced), at most output_bytes together with stderr
    stderr: str
    exit_code: int | None  # the program's exit code; 128+N for death by signal N; None if we killed it
    status: str  # one of STATUSES
    wall_s: float  # seconds from start to exit, sandbox setup included


def _world_runnable(path: str) -> bool:
    """True if uid 65534 can reach and execute `path` (every parent dir searchable by 'other')."""
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        while parent != "/":
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True


@lru_cache(maxsize=None)
def _setup() -> tuple[str, tuple[str, ...], int | None]:
    """(interpreter, bwrap command prefix, uid to start bwrap as or None), checked once by a trial run."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"code sandbox: bwrap not found; {_INSTALL}")
    as_root = os.geteuid() == 0
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3"]
    usable = [p for p in candidates if os.path.isfile(p) and (not as_root or _world_runnable(p))]
    if not usable:
        raise SandboxUnavailable("code sandbox: no python3 the sandbox user can run; "
                                 "install the system one (apt-get install -y python3-minimal)")
    python = usable[0]
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
           "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), "--hostname", "sandbox", "--clearenv"]
    for k, v in _ENV.items():
        cmd += ["--setenv", k, v]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):  # merged /usr: /lib -> usr/lib
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    prefix = os.path.dirname(os.path.dirname(python))  # e.g. ~/.pyenv/versions/3.11.7 for its bin/python3.11
    if not any(prefix == d or prefix.startswith(d + "/") for d in _SYSTEM_DIRS):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    setup = (python, tuple(cmd), _SANDBOX_UID if as_root else None)
    trial = _run(setup, "", b"", Limits(wall_s=10))  # an empty program: only bwrap itself can fail it
    if trial.status != "ok":
        detail = " ".join((trial.stderr or trial.stdout or trial.status).split())[:300]
        raise SandboxUnavailable(f"code sandbox: bwrap cannot start a sandbox here ({detail}); "
                                 "it needs bubblewrap >= 0.7 and unprivileged user namespaces")
    return setup


def _sealed_memfd(data: bytes) -> int:
    """A read-only in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create("sandbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


def _kill(proc: subprocess.Popen) -> None:
    # The group holds bwrap and its pid-namespace init; once the init dies the kernel kills every process
    # left in the namespace, whatever POSIX process session (setsid) or process group the code moved them to.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_empty(info_fd: int) -> None:
    """Wait (at most _REAP_S) until the sandbox's pid-namespace init is a zombie, i.e. all its processes are gone.

    bwrap can exit before the kernel has finished killing them; `info_fd` holds bwrap's --info-fd JSON.
    """
    try:
        info = json.loads(os.read(info_fd, _CHUNK))
        pid, ns = info["child-pid"], f"pid:[{info['pid-namespace']}]"
    except (OSError, ValueError, KeyError, TypeError):
        return  # bwrap failed before it wrote its info: nothing was started
    end = time.monotonic() + _REAP_S
    while time.monotonic() < end:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:  # gone, and the pid reused
                return
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":  # field 3, after "(comm)"
                    return
        except OSError:
            return
        time.sleep(0.005)


def _status(exit_code: int, stderr: str) -> str:
    if exit_code == 0:
        return "ok"
    if exit_code == 128 + signal.SIGXCPU:
        return "timeout"
    if stderr.rstrip().rpartition("\n")[2].startswith("MemoryError"):
        return "memory"
    if 128 < exit_code <= 128 + 64:  # bwrap's code for death by signal N is 128+N
        return "killed"
    return "error"


def _drain(proc: subprocess.Popen, sel: selectors.BaseSelector, out: dict[int, bytearray], room: int,
           deadline: float) -> str | None:
    """Read stdout and stderr into `out` until the program exits: None, or why we must end it ("timeout",
    "output_limit"). `room`: bytes we may still keep, both streams together (the rest is never held)."""
    for f in (proc.stdout, proc.stderr):
        sel.register(f, selectors.EVENT_READ)
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        for key, _ in sel.select(left):
            chunk = os.read(key.fd, _CHUNK)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            out[key.fd] += chunk[:room]
            if len(chunk) > room:
                return "output_limit"
            room -= len(chunk)
    try:  # both pipes closed; the program may still run
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return "timeout"
    return None


def _run(setup: tuple[str, tuple[str, ...], int | None], code: str, stdin: bytes, limits: Limits) -> SandboxResult:
    python, prefix, uid = setup
    code_fd, stdin_fd = _sealed_memfd(code.encode("utf-8", "replace")), _sealed_memfd(stdin)
    info_r, info_w = os.pipe()
    mb = 1 << 20
    cmd = [*prefix, "--info-fd", str(info_w), "--size", str(limits.file_mb * mb), "--tmpfs", "/tmp",
           "--ro-bind-data", str(code_fd), _CODE_PATH, "--remount-ro", "/", "--chdir", "/tmp", "--",
           python, "-I", "-c", _WRAPPER, str(limits.cpu_s), str(limits.memory_mb * mb), str(limits.processes),
           str(limits.file_mb * mb), _CODE_PATH]
    start = time.monotonic()
    deadline = start + limits.wall_s
    user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    try:
        proc = subprocess.Popen(cmd, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(code_fd, info_w), env=dict(_ENV), start_new_session=True, **user)
    except BaseException:
        os.close(info_r)
        raise
    finally:
        for fd in (code_fd, stdin_fd, info_w):
            os.close(fd)
    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    status = None
    with proc, selectors.DefaultSelector() as sel:
        try:
            status = _drain(proc, sel, out, limits.output_bytes, deadline)
            wall_s = time.monotonic() - start  # how long the program ran: cleanup not counted
        finally:  # also on an error of ours: never leave a sandbox running
            if status is not None or proc.poll() is None:
                _kill(proc)
            os.set_blocking(info_r, False)
            _wait_empty(info_r)
            os.close(info_r)
    stdout, stderr = (bytes(b).decode("utf-8", "replace") for b in out.values())
    if status is not None:
        return SandboxResult(stdout, stderr, None, status, wall_s)
    # bwrap reports a death by signal N as 128+N; a negative code means bwrap itself was signalled
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return SandboxResult(stdout, stderr, code, _status(code, stderr), wall_s)


def run_python(code: str, *, stdin: str = "", limits: Limits = Limits()) -> SandboxResult:
    """Run `code` as a script (`python3 -I main.py` in a fresh sandbox) with `stdin` as its standard input.

    Never raises for anything the code does; raises SandboxUnavailable if this machine cannot sandbox.
    """
    try:
        return _run(_setup(), code, stdin.encode("utf-8", "replace"), limits)
    except OSError as e:  # the host could not start bwrap (out of processes or memory): not the code's fault
        raise SandboxUnavailable(f"code sandbox: could not start bwrap ({e})") from e


def observation(result: SandboxResult) -> str:
    """What an agent sees after running code: stdout, stderr, then one status line."""
    if result.status == "timeout":
        tail = f"[status: timeout after {result.wall_s:.1f} s]"
    elif result.status == "output_limit":
        tail = "[status: output_limit, output cut off and the program killed]"
    elif result.status == "memory":
        tail = "[status: memory, out of memory]"
    elif result.status == "killed":
        tail = f"[status: killed by signal {result.exit_code - 128}]"
    else:
        tail = f"[status: {result.status}, exit code {result.exit_code}]"
    parts = [p.rstrip("\n") for p in (result.stdout, result.stderr) if p.strip()]
    return "\n".join([*parts, tail])
