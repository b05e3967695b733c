"""Tests for slide.sandbox: what sandboxed code can do, what it cannot, and that every failure is reported as data.

Skipped where bubblewrap is missing (the setup script installs it); each test runs in a fresh sandbox.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from slide import sandbox
from slide.sandbox import Limits, SandboxUnavailable, observation, run_python

FAST = Limits(wall_s=2.0, cpu_s=2, memory_mb=256, processes=32, output_bytes=10_000, file_mb=1)


@pytest.fixture(scope="module", autouse=True)
def _needs_bwrap():
    try:
        run_python("")
    except SandboxUnavailable as e:
        pytest.skip(str(e))


def _pid_ns(result) -> str:
    """The namespace id the sandboxed code printed first (e.g. 'pid:[4026532801]')."""
    return result.stdout.split("\n", 1)[0]


def _alive_in(ns: str) -> list[int]:
    """Host pids still running (zombies aside: the host's init reaps them) in pid namespace `ns`."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == ns and " Z " not in Path(f"/proc/{pid}/stat").read_text():
                alive.append(int(pid))
        except OSError:
            pass
    return alive


# --- what works -------------------------------------------------------------------------------------


def test_stdout_stdin_and_exit_code() -> None:
    r = run_python("import sys\nprint(input()[::-1])\nsys.exit(3)", stdin="abc\n", limits=FAST)
    assert (r.stdout, r.exit_code, r.status) == ("cba\n", 3, "error")
    ok = run_python("print('hi')", limits=FAST)
    assert (ok.stdout, ok.stderr, ok.exit_code, ok.status) == ("hi\n", "", 0, "ok")
    assert 0 < ok.wall_s < 2


def test_exception_goes_to_stderr() -> None:
    r = run_python("print('before')\n1/0", limits=FAST)
    assert r.status == "error" and r.exit_code == 1 and r.stdout == "before\n"
    assert "ZeroDivisionError" in r.stderr and 'File "/tmp/main.py", line 2' in r.stderr


def test_garbage_code_is_an_error_not_a_crash() -> None:
    for code in ["\xff\ud800 garbage", "def f(:", "\ufeff" + "(" * 500]:
        r = run_python(code, stdin="\ud800", limits=FAST)
        assert r.status == "error" and r.exit_code == 1 and "SyntaxError" in r.stderr, code
    # Python 3.11 drops the rest of a line after a NUL byte (3.12 refuses the file): no crash either way.
    assert run_python("print(1)\x00 junk (", limits=FAST).status in ("ok", "error")


def test_tmp_is_writable_and_private() -> None:
    r = run_python("open('x.txt', 'w').write('hello')\nprint(open('/tmp/x.txt').read())", limits=FAST)
    assert r.stdout == "hello\n" and r.status == "ok"
    assert not Path("/tmp/x.txt").exists() or Path("/tmp/x.txt").read_text() != "hello"


# --- what is blocked ----------------------------------------------------------------------------------


def test_no_network() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    code = f"""
import socket
for addr in [("1.1.1.1", 53), ("127.0.0.1", {port})]:
    try:
        socket.create_connection(addr, timeout=1)
        print("connected", addr)
    except OSError as e:
        print("blocked", type(e).__name__)
"""
    try:
        r = run_python(code, limits=FAST)
        assert r.status == "ok" and r.stdout.count("blocked") == 2, r.stdout
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing reached the parent's port
    finally:
        listener.close()


def test_cannot_write_outside_tmp() -> None:
    repo = Path(__file__).resolve().parents[1]
    targets = ["/usr/x", "/x", "/dev/x", "/etc/x", str(repo / "sandbox_escape"), "/root/x", "/proc/x"]
    code = f"""
for path in {targets!r}:
    try:
        open(path, "w").write("pwned")
        print("WROTE", path)
    except OSError as e:
        print("refused", path)
"""
    r = run_python(code, limits=FAST)
    assert r.status == "ok" and "WROTE" not in r.stdout and r.stdout.count("refused") == len(targets)
    assert not (repo / "sandbox_escape").exists()


def test_cannot_read_host_files(tmp_path: Path) -> None:
    secrets = [tmp_path / "secret.txt", Path.home() / ".slide_sandbox_test_secret"]
    for p in secrets:
        p.write_text("hunter2")
    repo = Path(__file__).resolve().parents[1]
    paths = [str(p) for p in secrets] + [str(repo / "pyproject.toml"), "/etc/passwd", "/etc/shadow"]
    code = f"""
import os
for path in {paths!r}:
    try:
        print("READ", path, open(path).read()[:20])
    except OSError:
        print("refused", path)
print(sorted(os.listdir("/")), os.path.exists("/work"), os.path.exists("/home"))
"""
    try:
        r = run_python(code, limits=FAST)
    finally:
        secrets[1].unlink()
    assert r.status == "ok" and "READ" not in r.stdout and "hunter2" not in r.stdout, r.stdout
    assert r.stdout.strip().endswith("False False")


def test_parent_environment_is_not_inherited(monkeypatch) -> None:
    monkeypatch.setenv("SLIDE_SANDBOX_SECRET", "hunter2")
    code = """
import os
print(sorted(os.environ))
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        print(open(f"/proc/{pid}/environ").read())
    except OSError:
        pass
"""
    r = run_python(code, limits=FAST)
    assert r.status == "ok" and "hunter2" not in r.stdout and "SLIDE_SANDBOX_SECRET" not in r.stdout
    assert r.stdout.startswith("['HOME', 'LANG', 'PATH'")


def test_process_limit_is_enforced_per_sandbox() -> None:
    # Four sandboxes at once, each forking up to 20 sleepers under a limit of 24: every one gets all 20,
    # so the count is per sandbox; then one tries 100 under a limit of 16 and is stopped near 16.
    code = """
import os, time
n = 0
try:
    while n < {want}:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""
    results = [None] * 4

    def one(i):
        results[i] = run_python(code.format(want=20), limits=Limits(wall_s=5, processes=24))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == ["20\n"] * 4, [(r.stdout, r.stderr[-200:]) for r in results]
    capped = run_python(code.format(want=100), limits=Limits(wall_s=5, processes=16))
    assert capped.status == "ok" and 10 <= int(capped.stdout) < 16, capped.stdout


def test_fork_bomb_is_bounded_and_cleaned_up() -> None:
    code = """
import os
print(os.readlink("/proc/self/ns/pid"), flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    start = time.monotonic()
    r = run_python(code, limits=FAST)
    assert time.monotonic() - start < FAST.wall_s + 1.5
    assert r.status == "timeout" and r.exit_code is None
    assert "timeout after 2.0 s" in observation(r)
    assert _alive_in(_pid_ns(r)) == []


def test_background_children_die_with_the_program() -> None:
    code = """
import os, time
print(os.readlink("/proc/self/ns/pid"), flush=True)
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
"""
    r = run_python(code, limits=FAST)
    assert r.status == "ok"
    assert _alive_in(_pid_ns(r)) == []


def test_memory_bomb() -> None:
    r = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))", limits=Limits(wall_s=5, memory_mb=128))
    assert r.status == "memory" and "MemoryError" in r.stderr
    assert "[status: memory" in observation(r)


def test_infinite_loop_wall_and_cpu() -> None:
    wall = run_python("import time\ntime.sleep(100)", limits=Limits(wall_s=1))
    assert wall.status == "timeout" and 1 <= wall.wall_s < 2
    cpu = run_python("while True:\n    pass", limits=Limits(wall_s=10, cpu_s=1))
    assert cpu.status == "timeout" and cpu.wall_s < 3  # SIGXCPU, long before the wall limit


def test_huge_output_is_capped() -> None:
    r = run_python("import sys\nwhile True:\n    print('x' * 1000)\n    sys.stderr.write('e' * 100)", limits=FAST)
    assert r.status == "output_limit" and r.exit_code is None
    assert 0 < len(r.stdout) + len(r.stderr) <= FAST.output_bytes
    assert observation(r).endswith("[status: output_limit, output cut off and the program killed]")


def test_file_size_and_tmp_size_limits() -> None:
    big = run_python("open('big', 'wb').write(b'x' * 2_000_000)", limits=FAST)  # file_mb=1
    assert big.status == "error" and "File too large" in big.stderr
    many = run_python("for i in range(4):\n    open(f'f{i}', 'wb').write(b'x' * 900_000)", limits=FAST)
    assert many.status == "error" and "No space left" in many.stderr


def test_signal_death_is_killed() -> None:
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", limits=FAST)
    assert r.status == "killed" and r.exit_code == 128 + 11
    assert observation(r) == "[status: killed by signal 11]"


# --- contract ---------------------------------------------------------------------------------------------


def test_observation_text() -> None:
    r = sandbox.SandboxResult(stdout="out\n", stderr="err\n", exit_code=1, status="error", wall_s=0.1)
    assert observation(r) == "out\nerr\n[status: error, exit code 1]"
    ok = sandbox.SandboxResult(stdout="", stderr="", exit_code=0, status="ok", wall_s=0.1)
    assert observation(ok) == "[status: ok, exit code 0]"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="wall_s=0.*processes=-1"):
        Limits(wall_s=0, processes=-1)


def test_missing_bwrap_raises_sandbox_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._setup.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
            run_python("print(1)")
    finally:
        monkeypatch.undo()
        sandbox._setup.cache_clear()
