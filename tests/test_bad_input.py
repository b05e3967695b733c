"""Bad input from the command line: one line `error: ...`, exit 2, no traceback, nothing damaged."""
import json
import os
import subprocess
import sys

import pytest

SLIDE = [sys.executable, "-m", "slide.cli"]


def slide(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*SLIDE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_user_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_key_and_bad_type(tmp_path):
    assert_user_error(slide("rl", "steps=abc", "rollout.bogus=1", f"out_dir={tmp_path}"), "steps", "rollout.bogus")


def test_missing_config_file():
    assert_user_error(slide("sft", "/no/such/config.yaml"), "/no/such/config.yaml", "not found")


def test_bad_flag_and_command():
    assert_user_error(slide("eval", "--model"), "--model")
    assert_user_error(slide("frobnicate"), "frobnicate")
    assert_user_error(slide("pretrain", "x.yaml", "--chain", "--fast", "threads=2"), "unrecognized arguments: --fast")


def test_overrides_after_a_flag_join_the_command_s_overrides():
    from slide.cli import _parse
    a = _parse(["pretrain", "c.yaml", "threads=1", "--chain", "threads=2", "out_dir=o"])
    assert (a.config, a.overrides, a.chain) == ("c.yaml", ["threads=1", "threads=2", "out_dir=o"], True)
    a = _parse(["rl", "--resume", "runs/rl", "steps=9"])
    assert (a.resume, a.config, a.overrides) == ("runs/rl", "steps=9", [])  # slide.cli._config_args: an override


@pytest.mark.parametrize("rows,needle", [
    ([{"question": "1+1", "answer": "2"}], "row 1: missing field 'prompt'"),
    ([{"prompt": "1+1", "answer": "2", "level": "hard"}], "level"),
    ([], "no rows"),
])
def test_bad_dataset(tmp_path, rows, needle):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = slide("rl", f"data.train={data}", f"out_dir={tmp_path}/runs", "steps=1")
    assert_user_error(r, "d.jsonl", needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))


def test_missing_and_corrupt_checkpoint(tmp_path):
    assert_user_error(slide("eval", "--model", str(tmp_path / "nope"), "--data", "arithmetic:1"), "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert_user_error(slide("eval", "--model", str(bad), "--data", "arithmetic:1"), str(bad))
    r = slide("rl", f"model.init={tmp_path / 'nope'}", f"out_dir={tmp_path}/runs", "steps=1")
    assert_user_error(r, "model.init", "nope")


def test_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "runs" / "rl"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert_user_error(slide("rl", f"out_dir={tmp_path}/runs", "steps=1"), str(run), "--resume")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert_user_error(slide("rl", "--resume", str(tmp_path / "nothing")), "not a run directory")
    # a resume may change where the run runs and its watchdog, never what it computes
    assert_user_error(slide("rl", "--resume", str(run), "train.lr=1"), "train.lr=1", "keeps its config", "watchdog_s")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    sft = tmp_path / "runs" / "sft"
    sft.mkdir()
    (sft / "metrics.jsonl").write_text('{"step": 1}\n')
    assert_user_error(slide("sft", f"out_dir={tmp_path}/runs", "steps=1"), str(sft), "--resume")
    assert_user_error(slide("sft", "--resume", str(sft)), "not a run directory")
    (sft / "config.yaml").write_text("steps: 5\n")
    assert_user_error(slide("sft", "--resume", str(sft), "lr=1"), "keeps its config")
    (sft / "final").mkdir()  # a finished run: resuming it changes nothing
    r = slide("sft", "--resume", str(sft))
    assert r.returncode == 0 and "has finished" in r.stdout, r.stderr
    assert (sft / "metrics.jsonl").read_text() == '{"step": 1}\n'
