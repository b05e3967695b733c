"""`slide ablate NAME --quick`: every ablation runs every arm end to end at toy size and writes its report."""
import json
import subprocess
import sys

import pytest

from slide.ablate import ABLATIONS
from slide.ablate.report import score


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("ablate")


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_quick_ablation_runs_every_arm_and_reports(name, out):
    cmd = [sys.executable, "-m", "slide.cli", "ablate", name, "--quick", "--seeds", "0", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    here = out / f"{name}-quick"
    report = json.loads((here / "report.json").read_text())
    assert (here / "report.png").stat().st_size > 10_000
    assert set(report["arms"]) == set(ABLATIONS[name].arms)
    for arm, row in report["arms"].items():
        assert row["status"] == {"0": "done"}
        evals = [json.loads(line) for line in (here / f"{arm}-s0" / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [2, 4]
        assert row["score_per_seed"]["0"] == pytest.approx(score([(e["step"], e["summary"]["pass@1"]) for e in evals]))
    assert report["summary_line"] in r.stdout
    # the same command again finds every run finished and only rewrites the report
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"({len(ABLATIONS[name].arms)} already done)" in again.stdout


def test_unknown_ablation_is_a_one_line_error(out):
    r = subprocess.run([sys.executable, "-m", "slide.cli", "ablate", "nope", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "token-mean" in r.stderr and "Traceback" not in r.stderr


def test_score_is_the_mean_of_the_last_three_evaluations():
    assert score([(5, 0.1), (10, 0.2), (15, 0.4), (20, 0.6)]) == pytest.approx(0.4)
    assert score([(5, 0.3)]) == pytest.approx(0.3)
    assert score([]) is None


def test_winner_must_beat_every_other_arm_on_a_seed_to_count_it(tmp_path, monkeypatch):
    """With more than two arms, a seed agrees with the winner only if the winner beats every other arm on it."""
    from slide.ablate import report
    from slide.ablate.specs import Ablation
    evals = {("a", 0): 0.5, ("b", 0): 0.4, ("c", 0): 0.6, ("a", 1): 0.9, ("b", 1): 0.3, ("c", 1): 0.4}
    monkeypatch.setattr(report, "read_run", lambda run: {"evals": [(1, evals[run])], "metrics": []})
    monkeypatch.setattr(report, "_plot", lambda *a: None)
    spec = Ablation("x", finding="f", expected="a", arms={"a": [], "b": [], "c": []})
    out = report.write_report(spec, {k: k for k in evals}, {k: "done" for k in evals}, tmp_path, wall_s=0.0)
    assert out["winner"] == "a" and out["winner_seeds"] == 1 and out["verdict"] == "inconclusive (seeds disagree)"
