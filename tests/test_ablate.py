"""`slide ablate NAME --quick`: every ablation runs both arms end to end at toy size and writes its report."""
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
def test_quick_ablation_runs_both_arms_and_reports(name, out):
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
    assert again.returncode == 0 and "(2 already done)" in again.stdout


def test_unknown_ablation_is_a_one_line_error(out):
    r = subprocess.run([sys.executable, "-m", "slide.cli", "ablate", "nope", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "token-mean" in r.stderr and "Traceback" not in r.stderr


def test_score_is_the_mean_of_the_last_three_evaluations():
    assert score([(5, 0.1), (10, 0.2), (15, 0.4), (20, 0.6)]) == pytest.approx(0.4)
    assert score([(5, 0.3)]) == pytest.approx(0.3)
    assert score([]) is None
