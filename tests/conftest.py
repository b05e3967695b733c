"""Shared fixtures: the built-in tokenizer and a fresh test-size model (one per module), and a briefly SFT-trained
test-size model (built once per session, ~30 s)."""
import os

import pytest

from slide.engine import set_threads

set_threads(min(2, os.cpu_count() or 1))  # no call when torch already uses that many (slide.engine)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """An HF folder: the test-size tiny GLM after a short cold start on arithmetic level 1."""
    from slide import sft
    from slide.config import SFTConfig, dump_config, load_config
    from slide.rundir import RunDir
    out = tmp_path_factory.mktemp("sft")
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=60", "batch_tokens=2048", "seq_len=128",
                                        "lr=2e-3", "eval_prompts=40", f"out_dir={out}", "examples=300"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    result = sft.run(cfg, run)
    return run.path / "final", result


@pytest.fixture(scope="module")
def tok():
    from slide.model.tokenizer import load_tokenizer
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A fresh test-size glm4_moe (seed 0), shared by a module's tests that only read it."""
    from slide.model.tiny import build_model, tiny_config
    return build_model(tiny_config("test", tok), seed=0)
