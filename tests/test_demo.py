"""The demo's whole path (SFT -> RL -> eval -> summary + plot) at toy size."""
import json

from slide.demo import run_demo


def test_quick_demo_writes_summary_and_plot(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(str(out), quick=True)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and saved["quick"] is True
    for key in ("sft_pass@1", "rl_pass@1", "rl_gain_points", "total_seconds"):
        assert key in saved
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "rl" / "checkpoints").is_dir() and (out / "sft" / "final" / "config.json").is_file()


def test_demo_never_overwrites_an_earlier_demo(tmp_path, monkeypatch):
    import slide.demo as demo
    seen = []
    monkeypatch.setattr(demo.RunDir, "create", lambda out, name, cfg: seen.append(out) or (_ for _ in ()).throw(
        RuntimeError("stop")))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "summary.json").write_text("{}")
    try:
        demo.run_demo(str(tmp_path / "demo"), quick=True)
    except RuntimeError:
        pass
    assert seen == [str(tmp_path / "demo-2")]
    assert (tmp_path / "demo" / "summary.json").read_text() == "{}"
