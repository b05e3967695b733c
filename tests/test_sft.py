"""Cold-start SFT: packing is exact (hand-checked), and a short run learns."""

from slide.sft import pack


def test_pack_hand_checked():
    a = ([5, 6, 7, 8], [0, 0, 1, 1])  # prompt 5 6, target 7 8
    b = ([9, 10, 11], [0, 1, 1])
    ids, labels, pos, mask, real = pack([a, b], seq_len=8, pad=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 0]]  # longest first, one row
    assert real.tolist() == [[True] * 7 + [False]]  # what the router balance counts: not the padding
    # label at i is token i+1 where token i+1 is a target token; the last token of each example has none
    assert labels.tolist() == [[-100, 7, 8, -100, 10, 11, -100, -100]]
    assert pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    m = mask[0, 0]
    assert m[5].tolist() == [False, False, False, False, True, True, False, False]  # b sees only b
    assert m[3].tolist() == [True, True, True, True, False, False, False, False]
    assert m[7, 7] and not m[7, :7].any()  # padding sees only itself


def test_pack_splits_rows_and_never_cuts_examples():
    exs = [([1] * 5, [1] * 5), ([2] * 4, [1] * 4), ([3] * 3, [1] * 3)]
    ids, labels, pos, mask, real = pack(exs, seq_len=8, pad=0)
    assert ids.shape == (2, 8)
    assert real.sum(dim=1).tolist() == [8, 4]
    rows = [r for r in ids.tolist()]
    assert rows[0][:8] == [1] * 5 + [3] * 3 and rows[1][:4] == [2] * 4


def test_short_sft_learns(sft_model):
    path, result = sft_model
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert result["summary"]["pass@1"] >= 0.1  # from 0 at random init


def test_gradient_accumulation_equals_one_big_batch():
    """backward() over two packed batches gives the gradients and loss of one batch of all their examples:
    the loss is the mean over every target token, however the examples are split or packed."""
    import torch

    from slide.model.tiny import ExpertLoad, build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    from slide.sft import backward
    tok = load_tokenizer()
    model = build_model(tiny_config("test", tok), seed=0)
    load = ExpertLoad(model)
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in (9, 14, 6, 11, 8):
        ids = torch.randint(10, len(tok), (n,), generator=gen).tolist()
        examples.append((ids, [0] * (n // 2) + [1] * (n - n // 2)))
    grads = []
    for batches in ([examples], [examples[:2], examples[2:]]):
        model.zero_grad(set_to_none=True)
        loss, targets = backward(model, load, batches, seq_len=32, pad=tok.pad_token_id)
        grads.append((loss, targets, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l1, t1, g1), (l2, t2, g2) = grads
    assert t1 == t2 == sum(sum(m) for _, m in examples)  # each target token is predicted from the one before
    assert abs(l1 - l2) < 1e-5
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class _Stop(Exception):
    pass


def _sft_run(tmp_path, name: str, extra: list[str], stop_after: int | None = None) -> list[dict]:
    """A short SFT run (checkpoints every 3 steps, eval every 2); with `stop_after`, interrupted once that step is
    logged (its rows past the step-3 checkpoint stay on disk, as a kill would leave them) and resumed."""
    import json

    from slide import sft
    from slide.config import SFTConfig, dump_config, load_config
    from slide.rundir import RunDir
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=7", "batch_tokens=1024", "seq_len=128",
                                        "lr=2e-3", "warmup_steps=2", "eval_prompts=8", "eval_every=2", "save_every=3",
                                        f"out_dir={tmp_path}", f"name={name}", *extra])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)

    def stop(step, metrics):
        if step == stop_after:
            raise _Stop

    try:
        sft.run(cfg, run, progress=stop)
    except _Stop:
        run, ckpt = RunDir.open(str(run.path))
        assert ckpt.name == "step_000003"
        sft.run(cfg, run, ckpt)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def test_interrupted_and_resumed_equals_a_straight_run(tmp_path):
    """A fixed pool (its shuffled order is part of the state): the resumed run's losses, gradient norms, evals and
    final weights are those of the run never stopped."""
    import torch
    from safetensors.torch import load_file
    extra = ["examples=40"]  # 40 examples: the pool's epochs turn over inside the run
    straight = _sft_run(tmp_path, "straight", extra)
    resumed = _sft_run(tmp_path, "resumed", extra, stop_after=5)
    assert resumed == straight
    assert straight[5]["eval_pass@1"] == resumed[5]["eval_pass@1"]
    a, b = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_lora_run_resumes_from_its_adapter(tmp_path, sft_model):
    init, _ = sft_model
    extra = [f"model.init={init}", "lora.rank=4", "lora.alpha=8", "examples=0"]
    assert _sft_run(tmp_path, "resumed", extra, stop_after=4) == _sft_run(tmp_path, "straight", extra)


def test_a_kill_while_final_is_written_leaves_no_finished_run(tmp_path, sft_model):
    """final/ marks a finished run (`slide sft --resume` leaves such a run as it is), so it appears whole or not at
    all: a save that dies after the weights leaves none, and the next save completes it."""
    import pytest

    from slide.model.load import load_with_tokenizer
    from slide.rundir import RunDir
    model, tok = load_with_tokenizer(str(sft_model[0]), "model.init")
    run = RunDir.create(str(tmp_path), "run", "name: run\n", tensorboard=False)

    class Killed(Exception):
        pass

    def killed(folder, **kw):
        raise Killed

    save = tok.save_pretrained
    tok.save_pretrained = killed
    with pytest.raises(Killed):
        run.save_final(model, tok)
    assert not (run.path / "final").exists() and (run.path / ".tmp-final" / "model.safetensors").is_file()
    tok.save_pretrained = save
    final = run.save_final(model, tok)
    assert final == run.path / "final" and not (run.path / ".tmp-final").exists()
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in final.iterdir()}


def test_the_stop_rule_ignores_a_pass_rate_that_luck_reaches(tmp_path, monkeypatch):
    """stop_at_pass_rate 0.2: held-out evals (every step) of 0.25 whose answers score as well against other
    prompts' problems (lucky) do not stop the run; the first one above chance (step 3) does."""
    import json

    from slide import sft
    from slide.config import SFTConfig, dump_config, load_config
    from slide.rundir import RunDir
    calls = []

    def evaluate(*args, chance=False, **kw):
        calls.append(chance)
        lucky = float(len(calls) < 3)
        return {"summary": {"pass@1": 0.25, "chance_pass@1": 0.25 if lucky else 0.0, "lucky": lucky}, "rows": []}

    monkeypatch.setattr(sft, "evaluate", evaluate)
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=6", "batch_tokens=512", "seq_len=128",
                                        "eval_prompts=4", "eval_every=1", "stop_at_pass_rate=0.2", "save_every=0",
                                        f"out_dir={tmp_path}", "name=run"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sft.run(cfg, run)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and calls == [True, True, True]
    assert [r["eval_lucky"] for r in rows] == [1.0, 1.0, 0.0] and rows[0]["eval_chance_pass@1"] == 0.25
