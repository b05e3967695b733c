"""slide view in a real headless browser (Playwright driving Debian's chromium): the page loads two runs, its charts
draw, the trajectory filter works, masked and trained text and tool calls are told apart; plus its bad input."""
import json
import shutil
import threading
import time
import urllib.request

import pytest
import uvicorn

from slide.rundir import RunDir
from slide.serve.server import listen
from slide.serve.view import build_view_app

CHROMIUM = shutil.which("chromium")


def make_run(root, name: str, rewards: list[float]) -> None:
    """A run folder as RunDir writes one: metrics per step, trajectories (two single-turn, one agent episode) per
    step."""
    run = RunDir.create(str(root), name, "name: x\n", tensorboard=False)
    for step, r in enumerate(rewards, start=1):
        run.log_metrics(step, {"reward_mean": r, "eval_pass@1": r / 2, "response_len_mean": 20 + step,
                               "time/step_s": 1.5, "time/generate_s": 0.9, "logprob_gap_mean": 0.01,
                               "expert_share_max": 0.4})
        base = {"step": step, "group": 0, "version": step - 1, "family": "arithmetic", "level": 1, "answer": "5",
                "response_len": 12}
        run.log_trajectories([
            base | {"prompt": f"2+3? (step {step})", "response": "<think>add</think>\n5", "reward": 1.0,
                    "status": "completed"},
            base | {"prompt": f"2+3? (step {step})", "response": "<think>hmm</think>\n6", "reward": 0.0,
                    "status": "truncated"},
            base | {"family": "calculator", "prompt": "12*34?", "response": "...", "reward": 1.0,
                    "status": "completed", "reason": "answered", "messages": [
                        {"role": "user", "content": "12*34?"},
                        {"role": "assistant", "reasoning_content": "use the tool", "content": "",
                         "tool_calls": [{"name": "calculate", "arguments": {"expression": "12*34"}}]},
                        {"role": "tool", "content": "408"},
                        {"role": "assistant", "content": "408"}]}])
    run.close()


@pytest.fixture
def viewer(tmp_path):
    make_run(tmp_path, "alpha", [0.1, 0.4, 0.8])
    make_run(tmp_path, "beta", [0.2, 0.3])
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_view_app(tmp_path), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_api_filters_trajectories(viewer):
    def get(path):
        with urllib.request.urlopen(viewer + path, timeout=30) as r:
            return json.loads(r.read())
    assert [r["name"] for r in get("/api/runs")] == ["alpha", "beta"]
    assert [m["reward_mean"] for m in get("/api/metrics?run=beta")] == [0.2, 0.3]
    t = get("/api/trajectories?run=alpha&step=2&min_reward=1")
    assert (t["total"], t["matched"]) == (9, 2) and {r["step"] for r in t["rows"]} == {2}
    assert get("/api/trajectories?run=alpha&status=truncated")["matched"] == 3


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh installs it)")
def test_page_loads_runs_draws_charts_and_filters(viewer, tmp_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(viewer + "/")
        page.wait_for_selector("canvas[data-metric='reward_mean'][data-points]")
        drawn = page.eval_on_selector_all("canvas", "cs => cs.map(c => [c.dataset.metric, +c.dataset.points])")
        metrics = dict(drawn)
        assert metrics["reward_mean"] == 5  # 3 steps of alpha + 2 of beta
        assert {"eval_pass@1", "response_len_mean", "time/step_s", "time/generate_s", "logprob_gap_mean",
                "expert_share_max"} <= set(metrics)
        inked = page.eval_on_selector("canvas[data-metric='reward_mean']", """c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
        assert inked > 200  # lines and axes are on the canvas
        page.wait_for_selector(".traj")
        assert page.locator(".traj").count() == 9
        page.select_option("#f-step", "2")
        page.fill("#f-min", "1")
        page.click("#apply")
        page.wait_for_function("document.querySelectorAll('.traj').length === 2")
        assert "2 of 9" in page.inner_text("#count")
        agent = page.locator(".traj", has_text="calculator")
        assert agent.locator(".toolcall").count() == 1 and "calculate" in agent.locator(".toolcall").inner_text()
        assert agent.locator(".turn.masked").count() == 2 and agent.locator(".turn.trained").count() == 2
        page.uncheck("#runs input[value='beta']")
        page.wait_for_function("+document.querySelector(\"canvas[data-metric='reward_mean']\").dataset.points === 3")
        page.screenshot(path=str(tmp_path / "view.png"), full_page=True)
        browser.close()
    assert (tmp_path / "view.png").stat().st_size > 10_000


def test_bad_runs_folder_is_one_error_line(tmp_path, capsys):
    from slide.cli import main
    assert main(["view", str(tmp_path / "nope")]) == 2
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: runs folder") and "no run in it" in err[1] and len(err) == 2
