"""Config loading: YAML + overrides, every error at once, on one line, naming file and field."""
import pytest

from slide.config import RLConfig, SFTConfig, dump_config, load_config
from slide.errors import UserError


def test_defaults_follow_glm():
    cfg = load_config(RLConfig)
    assert cfg.algo.kl_coef == 0.0 and cfg.algo.loss_agg == "token-mean"
    assert cfg.algo.clip_high > cfg.algo.clip_low  # clip-higher


def test_yaml_and_typed_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nrollout:\n  n: 4\n")
    cfg = load_config(RLConfig, str(f), ["rollout.temperature=0.5", "algo.dynamic_sampling=false", "model.init=x"])
    assert (cfg.steps, cfg.rollout.n, cfg.rollout.temperature) == (7, 4, 0.5)
    assert cfg.algo.dynamic_sampling is False and cfg.model.init == "x"
    assert load_config(RLConfig, None, []).steps != 7
    # YAML 1.2 booleans: `off` names a run; a bool field still reads on/off
    odd = load_config(RLConfig, None, ["name=off", "out_dir=no", "algo.dynamic_sampling=on"])
    assert (odd.name, odd.out_dir, odd.algo.dynamic_sampling) == ("off", "no", True)
    again = tmp_path / "d.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(RLConfig, str(again)) == cfg


def test_all_errors_reported_together_on_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: -1\nrollout:\n  n: 1\n  colour: red\nalgo:\n  loss_agg: sum\n")
    with pytest.raises(UserError) as e:
        load_config(RLConfig, str(f))
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg
    for field in ("steps", "rollout.n", "rollout.colour: unknown key", "algo.loss_agg"):
        assert field in msg
    assert "token-mean" in msg  # says what is allowed


@pytest.mark.parametrize("content,needle", [
    ("steps: [1, 2", "not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_malformed_files(tmp_path, content, needle):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=needle):
        load_config(SFTConfig, str(f))


def test_missing_file_and_bad_override():
    with pytest.raises(UserError, match="not found"):
        load_config(RLConfig, "/no/such.yaml")
    with pytest.raises(UserError, match="key=value"):
        load_config(RLConfig, None, ["steps"])
    with pytest.raises(UserError, match="train.lr"):
        load_config(RLConfig, None, ["train.lr=fast"])


def test_config_is_frozen():
    cfg = load_config(RLConfig)
    with pytest.raises(Exception):
        cfg.steps = 3


def test_async_takes_several_updates_per_step_and_decoupled_ppo():
    """Async mode trains k mini-batch updates per step (decoupled PPO's trust region needs them); the behaviour
    weight cap of decoupled PPO must exceed 1, named in a one-line error."""
    cfg = load_config(RLConfig, None, ["mode=async", "train.updates_per_step=2", "algo.importance=decoupled"])
    assert (cfg.train.updates_per_step, cfg.algo.importance, cfg.algo.decoupled_cap) == (2, "decoupled", 5.0)
    with pytest.raises(UserError, match=r"algo.decoupled_cap: Input should be greater than 1"):
        load_config(RLConfig, None, ["algo.importance=decoupled", "algo.decoupled_cap=0.5"])
    with pytest.raises(UserError, match=r"algo.importance: Input should be 'tis', 'mis', 'decoupled' or 'none'"):
        load_config(RLConfig, None, ["algo.importance=proximal"])


def test_vllm_sleep_needs_one_vllm_engine_and_a_gpu():
    """rollout.vllm_sleep: vLLM's sleep mode for one engine beside the trainer; elsewhere a one-line error, and on a
    CPU (no sleep mode there) an error that says so before vLLM starts."""
    from slide.engine import make_engine
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    assert load_config(RLConfig, None, ["rollout.engine=vllm", "rollout.vllm_sleep=1"]).rollout.vllm_sleep == 1
    for bad in (["rollout.vllm_sleep=1"], ["rollout.engine=vllm", "rollout.engines=2", "rollout.vllm_sleep=2"]):
        with pytest.raises(UserError, match="rollout.vllm_sleep: for rollout.engine=vllm with rollout.engines=1"):
            load_config(RLConfig, None, bad)
    with pytest.raises(UserError, match="rollout.vllm_sleep: Input should be less than or equal to 2"):
        load_config(RLConfig, None, ["rollout.engine=vllm", "rollout.vllm_sleep=3"])
    model = build_model(tiny_config("test", load_tokenizer()), seed=0)
    with pytest.raises(UserError, match="sleep mode frees GPU memory; this run's model is on the CPU"):
        make_engine("vllm", model, 0, sleep_level=1)
