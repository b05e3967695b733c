"""Process trees of test subprocesses: what a kill -9 of a driver leaves behind, found and reaped (from /proc)."""
import os
import signal
import time
from collections import defaultdict
from pathlib import Path


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live process below `pid` (read from /proc, so no psutil)."""
    children = defaultdict(list)
    start = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children[int(fields[1])].append(int(p.name))
            start[int(p.name)] = fields[19]
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = start[c]
            todo.append(c)
    return out


def reap(procs: dict[int, str]) -> list[str]:
    """Wait a few seconds for `procs` to exit, then SIGKILL the survivors; returns what had to be killed."""
    def alive():
        out = {}
        for pid, started in procs.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and fields[19] == started:  # same process, not a reused pid
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60].strip()
        return out

    deadline = time.time() + 5
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    left = alive()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"{pid} {cmd}" for pid, cmd in left.items()]


def named(procs: dict[int, str], prefix: str) -> list[int]:
    """The pids among `procs` whose command line starts with `prefix` (Ray names its actors' processes
    `ray::ClassName`)."""
    out = []
    for pid in procs:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith(prefix):
            out.append(pid)
    return out
