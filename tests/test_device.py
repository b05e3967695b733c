"""`device: auto | cpu | cuda | cuda:N`: resolved in one place (slide/device.py), refused with one line where this
machine lacks it (nothing written, nothing already written touched), and on the CPU exactly the runs of before.

CUDA itself is exercised by benchmarks/gpu_check.py on a GPU machine; here "CUDA available" is simulated only where
the answer is a decision (which device, which precision), never with fake CUDA tensors."""
import json

import pytest
import torch
from test_bad_input import assert_user_error, slide

from slide import sft
from slide.config import RLConfig, SFTConfig, dump_config, load_config
from slide.device import generator, memory_metrics, precision_for, resolve_device
from slide.errors import UserError
from slide.rl import sync
from slide.rl.parts import build
from slide.rl.worker import gpu_share
from slide.rundir import RunDir, latest_checkpoint, load_state, rng_state
from slide.weights.buckets import WeightSync

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_and_cpu():
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_one_line_user_error(without_cuda):
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(UserError) as e:
            resolve_device(spec)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"device: {spec!r} requested")
        assert "torch.cuda.is_available() is False" in msg and torch.__version__ in msg
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_indices_against_the_gpus_torch_sees(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"'cuda:7' requested but torch sees 2 CUDA device\(s\) \(cuda:0..cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "mps", ""])
def test_invalid_spec_is_a_config_error_naming_the_field(spec):
    for cls in (RLConfig, SFTConfig):
        with pytest.raises(UserError) as e:
            load_config(cls, None, [f"device={spec}"])
        assert "device: " in str(e.value) and "allowed: auto | cpu | cuda | cuda:N" in str(e.value)
    with pytest.raises(UserError, match="allowed: auto"):
        resolve_device(spec)


def test_valid_specs_load_unchanged():
    for spec in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert load_config(RLConfig, None, [f"device={spec}"]).device == spec
    assert load_config(SFTConfig).device == "auto"


def test_auto_precision_is_bf16_on_gpu_fp32_on_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert precision_for("auto", cpu) == "fp32" and precision_for("auto", gpu) == "bf16"
    for p in ("fp32", "bf16", "fp8"):
        assert precision_for(p, cpu) == precision_for(p, gpu) == p
    cfg = load_config(RLConfig)
    assert (cfg.train.precision, cfg.rollout.precision, load_config(SFTConfig).precision) == ("auto",) * 3


def test_cpu_helpers_are_what_they_were():
    cpu = torch.device("cpu")
    plain = torch.Generator().manual_seed(3)
    assert torch.equal(torch.rand(8, generator=generator(cpu, 3)), torch.rand(8, generator=plain))
    assert memory_metrics(cpu) == {}
    if not torch.cuda.is_initialized():
        assert set(rng_state()) == {"python", "numpy", "torch"}  # no CUDA stream saved where CUDA is unused


def test_async_workers_ask_ray_for_a_gpu_share_only_on_cuda(two_gpus):
    assert gpu_share("cpu", 4) == 0.0
    assert gpu_share("cuda", 4) == 0.5 and gpu_share("cuda", 1) == 1.0


def test_buckets_move_to_host_memory_whole():
    model = torch.nn.Linear(256, 128)
    for precision in ("fp32", "fp8"):
        [bucket] = WeightSync(precision).buckets(model, version=3)
        moved = bucket.to("cpu")
        assert (moved.version, moved.index, moved.total, moved.nbytes) == (3, 0, 1, bucket.nbytes)
        for (n1, p1), (n2, p2) in zip(bucket.items, moved.items):
            assert n1 == n2 and all(torch.equal(a, b) for a, b in zip(p1 if precision == "fp8" else [p1],
                                                                       p2 if precision == "fp8" else [p2]))


# -- the commands: one `error:` line, exit 2, nothing written, nothing already written touched ----------------

@no_cuda
def test_sft_and_rl_refuse_cuda_before_writing(tmp_path):
    assert_user_error(slide("sft", f"out_dir={tmp_path}/runs", "device=cuda"), "device: 'cuda'", "is_available")
    assert_user_error(slide("rl", f"out_dir={tmp_path}/runs", "device=cuda:0"), "device: 'cuda:0'")
    assert not (tmp_path / "runs").exists()


@no_cuda
def test_rl_on_an_existing_run_and_resume_touch_nothing(tmp_path):
    run = tmp_path / "runs" / "rl"
    run.mkdir(parents=True)
    config = dump_config(load_config(RLConfig, None, [f"out_dir={tmp_path}/runs", "device=cuda"]))
    rows = '{"step": 1}\n{"step": 2}\n'  # no checkpoint: a resume that got as far as open() would trim both rows
    (run / "config.yaml").write_text(config)
    (run / "metrics.jsonl").write_text(rows)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert_user_error(slide("rl", "--resume", str(run)), "device: 'cuda'")
    assert_user_error(slide("rl", f"out_dir={tmp_path}/runs", "device=cuda"), "device: 'cuda'")
    assert (run / "metrics.jsonl").read_text() == rows and (run / "config.yaml").read_text() == config
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no tb/, no checkpoints/


@no_cuda
def test_model_commands_refuse_cuda(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert_user_error(slide("eval", "--model", str(tmp_path), "--data", "arithmetic:1", "--device", "cuda"), "device")
    assert_user_error(slide("data", "measure", str(data), str(out), "--model", str(tmp_path), "--k", "1",
                            "--device", "cuda"), "device: 'cuda'")
    assert_user_error(slide("bench", "--model", str(tmp_path), "--device", "cuda:1"), "device: 'cuda:1'")
    assert_user_error(slide("demo", "--out", str(tmp_path / "demo"), "--device", "cuda"), "device: 'cuda'")
    assert_user_error(slide("eval", "--model", str(tmp_path), "--data", "arithmetic:1", "--device", "gpu"),
                      "'gpu' is not a device", "auto | cpu | cuda | cuda:N")
    assert not out.exists() and not (tmp_path / "demo").exists()


# -- device=cpu is the default run, bit for bit --------------------------------------------------------------

def _metrics(run: RunDir) -> list[dict]:
    """metrics.jsonl without the wall-clock columns."""
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith("time/") or k == "elapsed_s")} for r in rows]


def _run(module, cls, tmp_path, name, *overrides):
    cfg = load_config(cls, None, [f"out_dir={tmp_path}", f"name={name}", *overrides])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    module.run(cfg, run)
    return run


def test_explicit_cpu_sft_is_the_default_run(tmp_path):
    tiny = ["data=arithmetic:1", "steps=2", "batch_tokens=512", "seq_len=128", "eval_prompts=4", "examples=16"]
    default = _run(sft, SFTConfig, tmp_path, "default", *tiny)
    cpu = _run(sft, SFTConfig, tmp_path, "cpu", *tiny, "device=cpu", "precision=fp32")
    assert _metrics(cpu) == _metrics(default) and len(_metrics(cpu)) == 2


def test_explicit_cpu_rl_is_the_default_run_and_its_checkpoint_is_as_before(tmp_path, capsys):
    tiny = ["steps=2", "save_every=1", "eval_every=0", "rollout.prompts_per_step=2", "rollout.n=4",
            "rollout.max_new_tokens=24", "data.eval_prompts=4", "algo.dynamic_sampling=false", "train.micro_batch=8"]
    default = _run(sync, RLConfig, tmp_path, "default", *tiny)
    cpu = _run(sync, RLConfig, tmp_path, "cpu", *tiny, "device=cpu", "train.precision=fp32",
               "rollout.precision=fp32")
    assert _metrics(cpu) == _metrics(default) and len(_metrics(cpu)) == 2
    assert not any(k.startswith("gpu/") for k in _metrics(cpu)[0])
    ckpt = latest_checkpoint(cpu.ckpt_dir)
    state = load_state(ckpt)
    assert "device" not in state and "cuda" not in state["rng"]  # a CPU checkpoint holds what it always held
    assert not torch.cuda.is_initialized()  # nothing on the CPU path touched CUDA

    # a checkpoint written on a GPU resumes on the CPU: its generator state fits only a CUDA generator, so
    # sampling continues from a fresh seed, said on stderr
    state["device"] = "cuda"
    torch.save(state, ckpt / "state.pt")
    cfg = load_config(RLConfig, str(cpu.path / "config.yaml"))
    parts = build(cfg, ckpt)
    assert parts.start == 2 and parts.device == torch.device("cpu") and parts.rollout_precision == "fp32"
    assert not torch.equal(parts.generator.get_state(), state["generator"])
    assert "was written on cuda, this run is on cpu" in capsys.readouterr().err
