"""Async mode's background evaluator (slide/rl/evaluator.py): a version scores exactly as the inline eval scores the
same weights, the trainer never waits for it (results arrive at later steps, each version once), and an evaluator
that raises or dies costs at most its version, never the run. Resume after kill -9: tests/test_async.py.
"""
import json

import pytest

from slide.config import RLConfig, load_config
from slide.rl.evaluator import MAX_DEATHS, BackgroundEval, InlineEval
from slide.rl.parts import build
from slide.rundir import RunDir
from test_async import SMALL, kill_at, one_torch_thread, ray_session, read, run_async, sft_init  # noqa: F401 (fixtures)


def eval_rows(path):
    return read(path / "eval.jsonl")


def check_eval_log(cfg, path) -> list[dict]:
    """Every eval point (eval_every, and the last step) logged once in version order, or counted as skipped;
    each row logged at or after its version, where that step's metrics name the newest version in; the last
    version is in by the last step. Returns the metrics rows."""
    rows, evals = read(path / "metrics.jsonl"), eval_rows(path)
    versions = [e["step"] for e in evals]
    points = [s for s in range(1, cfg.steps + 1) if (cfg.eval_every and s % cfg.eval_every == 0) or s == cfg.steps]
    assert versions == sorted(set(versions)) and set(versions) <= set(points), versions
    assert len(versions) + sum(r.get("eval_skipped", 0) for r in rows) == len(points), (versions, rows)
    assert versions[-1] == cfg.steps
    by_step = {r["step"]: r for r in rows}
    for e in evals:
        assert e["logged_at"] >= e["step"]
        at = by_step[e["logged_at"]]
        assert at["eval_version"] >= e["step"] and at["eval_lag_steps"] == e["logged_at"] - at["eval_version"]
    assert rows[-1]["eval_version"] == cfg.steps and rows[-1]["eval_pass@1"] == evals[-1]["summary"]["pass@1"]
    assert rows[-1]["eval_chance_pass@1"] == evals[-1]["summary"]["chance_pass@1"]  # chance comes along, either way
    return rows


def without_log_keys(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("step", "logged_at")}


def test_background_eval_scores_as_inline_and_never_blocks_the_trainer(sft_init, ray_session, tmp_path):
    """eval_every=1 over 4 steps, checkpoints at 2 and 4. Each eval is sent at the end of its step and the driver
    only collects what has finished, so a version saved at no checkpoint arrives at a later step (lag >= 1); a
    checkpoint waits for the older versions only, the last step for all. The versions with a checkpoint, scored
    again inline from it (the sync driver's way), give the very same result (greedy decoding)."""
    cfg, path = run_async(tmp_path, "bg", f"model.init={sft_init}", *SMALL, "steps=4", "eval_every=1",
                          "save_every=2", "disagg.workers=2", "disagg.eval_in_background=true")
    rows = check_eval_log(cfg, path)
    evals = {e["step"]: e for e in eval_rows(path)}
    # not waited for at its own step (the trainer went on), but in before step 2's checkpoint
    assert evals[1]["logged_at"] == 2
    assert all(r["time/evaluator_s"] > 0 for r in rows if "eval_version" in r)
    assert all(r.get("eval_failures", 0) == 0 for r in rows)
    for version in (2, 4):
        p = build(cfg, path / "checkpoints" / f"step_{version:06d}")
        with InlineEval(cfg, p) as inline:
            inline.submit(version)
            (_, result, _), = inline.poll()
        assert without_log_keys(evals[version]) == json.loads(json.dumps(result)), version


def test_a_killed_evaluator_is_replaced_and_its_version_scored_again(sft_init, ray_session, tmp_path):
    """The evaluator is killed (as by the OOM killer) right after step 2 sent its version: the run goes on, the
    death is counted, a new evaluator scores the version again (or the newer one that waits); every version is
    logged once or counted skipped, and the last one is in."""
    killed = []
    cfg, path = run_async(tmp_path, "killed-eval", f"model.init={sft_init}", *SMALL, "steps=4", "eval_every=1",
                          "disagg.workers=2", "disagg.eval_in_background=true",
                          progress=kill_at(2, "slide-evaluator", killed))
    assert killed == [2]
    rows = check_eval_log(cfg, path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert sum(r.get("eval_failures", 0) for r in rows) == 1
    assert not any(r.get("eval_inline") for r in rows)  # one death: replaced, not given up on


@pytest.fixture(scope="module")
def parts(ray_session, tmp_path_factory):
    """A fresh test-size model's run parts (its greedy answers score 0; what matters is what comes back)."""
    cfg = load_config(RLConfig, None, [*SMALL, "mode=async", "threads=1", "data.eval_prompts=2", "rollout.sync_bucket_mb=0.5",
                                       f"out_dir={tmp_path_factory.mktemp('ev')}"])
    return cfg, build(cfg)


def test_an_eval_that_raises_loses_only_its_version(parts, tmp_path):
    """Version 1's buckets arrive incomplete (the last one missing): the actor's weight receiver refuses them,
    the eval raises, it is counted and not logged; the same actor then scores version 2."""
    cfg, p = parts
    run = RunDir.create(str(tmp_path), "raises", "", tensorboard=False)
    buckets = p.publish(1)[0]
    assert len(buckets) > 1
    with BackgroundEval(cfg, p) as evals:
        evals.submit(1, buckets[:-1])
        out = evals.collect(run, 1, wait_below=2)
        assert out == {"eval_failures": 1} and evals.pending() == []
        actor = evals.actor
        evals.submit(2, p.publish(2)[0])
        out2 = evals.collect(run, 2, wait_below=3)
        assert evals.actor is actor  # not replaced: it raised, it did not die
    assert [e["step"] for e in eval_rows(run.path)] == [2]
    assert out2["eval_version"] == 2 and out2["eval_lag_steps"] == 0 and "eval_pass@1" in out2
    run.close()


def test_an_evaluator_that_keeps_dying_falls_back_to_inline(parts, tmp_path):
    """An evaluator that cannot even start (its model.init is an empty folder) dies at every call: after
    MAX_DEATHS deaths in a row the version is scored inline, in this process, and logged like any other."""
    cfg, p = parts
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init": str(empty)})})
    run = RunDir.create(str(tmp_path), "dies", "", tensorboard=False)
    with BackgroundEval(bad, p) as evals:
        evals.submit(1, p.publish(1)[0])
        out = evals.collect(run, 1, wait_below=2)
        assert evals.fallback is not None
    assert out["eval_failures"] == MAX_DEATHS and out["eval_inline"] == 1
    assert out["eval_version"] == 1 and [e["step"] for e in eval_rows(run.path)] == [1]
    run.close()
