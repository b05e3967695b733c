"""Pre-training pieces (slide/pretrain/): mixture sampling, streams' positions, the stage schedule, best-fit packing
and the packed forward, the RoPE-base switch, the Muon/AdamW split, bad configs and data files."""
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from slide.cli import main
from slide.pretrain.config import ScheduleSpec, StageSpec
from slide.packing import best_fit, to_tensors
from slide.pretrain.optim import Optimizers, split
from slide.pretrain.packer import Packer, encode
from slide.pretrain.runner import rope_theta_of, set_rope_theta
from slide.pretrain.schedule import batch_tokens_at, lr_at, plan, rows_at
from slide.pretrain.streams import Mixture, Stream


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_mixture_draws_each_source_in_proportion_to_its_weight(tmp_path):
    streams = [Stream(_jsonl(tmp_path / f"{n}.jsonl", [f"{n}{i}" for i in range(50)]), "text", 2) for n in "abc"]
    mix = Mixture(list("abc"), streams, [5.0, 3.0, 2.0], seed=0)
    n = 3000
    for _ in range(n):
        mix.next()
    for drawn, p in zip(mix.drawn, [0.5, 0.3, 0.2]):
        assert abs(drawn - n * p) < 4 * math.sqrt(n * p * (1 - p))  # 4 binomial sigmas: ~45 documents at p=0.5
    assert sum(mix.drawn) == n


def test_mixture_weights_are_shares_of_text_not_of_documents(tmp_path):
    short = Stream(_jsonl(tmp_path / "s.jsonl", ["x" * 10] * 40), "text", 4)
    long = Stream(_jsonl(tmp_path / "l.jsonl", ["y" * 100] * 40), "text", 4)
    mix = Mixture(["s", "l"], [short, long], [1.0, 1.0], seed=0)
    chars = [0, 0]
    for _ in range(2200):
        i, text = mix.next()
        chars[i] += len(text)
    assert abs(chars[0] / sum(chars) - 0.5) < 0.05  # equal weights: equal text (10 short documents per long one)
    assert 8 < mix.drawn[0] / mix.drawn[1] < 12


def test_streams_hold_out_their_first_documents_and_resume_at_their_position(tmp_path):
    texts = [f"doc {i}" for i in range(7)]
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(t)
    table = pa.table({"body": texts})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=3)  # rows cross row-group boundaries
    for path, field in [(_jsonl(tmp_path / "d.jsonl", texts), "text"), (str(tmp_path / "d.parquet"), "body"),
                        (str(folder), "text")]:
        s = Stream(path, field, held_out=2)
        assert s.held_out == texts[:2]
        got = [s.next() for _ in range(4)]
        state = s.state()
        rest = [s.next() for _ in range(4)]
        assert got + rest == texts[2:] + texts[2:5]  # the second epoch starts after the held-out documents
        again = Stream(path, field, held_out=2)
        again.load(state)
        assert [again.next() for _ in range(4)] == rest
        assert again.state()["epoch"] == 1


def test_lr_schedule_runs_across_stages_with_warmup_then_cosine_or_wsd():
    s = ScheduleSpec(lr=1.0, min_lr_ratio=0.1, warmup_tokens=100, decay="cosine")
    assert lr_at(50, 1100, s) == 0.5  # half way through the warmup
    assert lr_at(100, 1100, s) == 1.0
    assert lr_at(600, 1100, s) == pytest.approx(0.55)  # half way through the decay: (1 + 0.1) / 2
    assert lr_at(1100, 1100, s) == pytest.approx(0.1)
    w = ScheduleSpec(lr=1.0, min_lr_ratio=0.1, decay="wsd", wsd_decay_frac=0.2)
    assert lr_at(800, 1000, w) == 1.0 and lr_at(900, 1000, w) == pytest.approx(0.55) and lr_at(1000, 1000, w) == pytest.approx(0.1)
    # two stages of 512 tokens: 4 steps of 2 rows x 64, then 2 steps of one 256-token row (128 tokens round to
    # at least one row); one curve over all 1024 tokens: warmup to 256, cosine over the other 768
    stages = [StageSpec(name="a", mixture=[{"name": "x", "path": "x"}], seq_len=64, tokens=512),
              StageSpec(name="b", mixture=[{"name": "x", "path": "x"}], seq_len=256, tokens=512)]
    sch = ScheduleSpec(lr=1.0, min_lr_ratio=0.0, warmup_tokens=256, batch_tokens=128)
    steps = plan(stages, sch)
    assert [r for r, _ in steps[0]] == [2, 2, 2, 2] and [r for r, _ in steps[1]] == [1, 1]
    assert [lr for _, lr in steps[0]] == [0.5, 1.0, pytest.approx(0.5 * (1 + math.cos(math.pi * 128 / 768))),
                                          pytest.approx(0.5 * (1 + math.cos(math.pi * 256 / 768)))]
    assert steps[1][0][1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 512 / 768)))  # stage b starts mid-curve
    assert steps[1][-1][1] == pytest.approx(0.0)


def test_batch_size_warms_up_linearly_in_tokens():
    s = ScheduleSpec(batch_start_tokens=1024, batch_tokens=4096, batch_warmup_tokens=10_000)
    assert batch_tokens_at(0, s) == 1024
    assert batch_tokens_at(5_000, s) == 2560
    assert batch_tokens_at(10_000, s) == 4096 and batch_tokens_at(99_999, s) == 4096
    assert rows_at(0, 128, s) == 8 and rows_at(10_000, 128, s) == 32


def test_best_fit_fills_the_tightest_row_and_splits_no_document_that_fits():
    docs = [([i] * n, [1] * n) for i, n in enumerate([60, 50, 40, 30, 20, 10], start=1)]
    rows = best_fit(docs, 64)
    # 60 -> new row (room 4); 50 -> new (14); 40 -> new (24); 30 -> new (34); 20 -> the row with room 24 (tightest
    # that fits); 10 -> the row with room 14
    assert sorted(sorted(len(d[0]) for d in row) for row in rows) == [[10, 50], [20, 40], [30], [60]]
    assert [sum(len(d[0]) for d in row) for row in rows] == [60, 60, 60, 30]  # fullest first
    assert sorted(tuple(d[0]) for row in rows for d in row) == sorted(tuple(d[0]) for d in docs)


class _ListMixture:
    names = ["x"]
    drawn = [0]

    def __init__(self, texts):
        self.texts = list(texts)

    def next(self):
        return 0, self.texts.pop(0)


def test_packers_keep_every_token_and_best_fit_cuts_only_documents_longer_than_a_row(tok):
    texts = ["a" * n for n in (10, 70, 25, 5, 40, 33, 12, 64, 90, 8)] * 3
    whole = [encode(tok, t) for t in texts]
    bf = Packer(_ListMixture(texts), tok, 64, "best-fit")
    rows = bf.rows(3) + bf.rows(3)
    for row in rows:
        assert sum(len(ids) for ids, _ in row) <= 64
        for ids, _ in row:
            assert ids in whole or len(ids) == 64 or any(len(w) > 64 for w in whole if w[:len(ids)] == ids
                                                         or w[-len(ids):] == ids)
    tr = Packer(_ListMixture(texts), tok, 64, "truncate")
    flat = [t for row in tr.rows(5) for ids, _ in row for t in ids]
    assert flat == [t for ids in whole for t in ids][:5 * 64]  # back to back, nothing lost or padded


def test_best_fit_trains_short_documents_drawn_before_a_long_one_first(tok):
    """A long document cut into many full rows must not starve the short documents drawn before it: the rows holding
    the oldest documents train first, and what waits is at most a batch and a row beyond the longest document."""
    texts = ["s" * 20, "t" * 30, "L" * 64 * 12] + ["u" * 40, "v" * 10] * 20
    packer = Packer(_ListMixture(texts), tok, 64, "best-fit")
    first = packer.rows(2)
    trained = [ids for row in first for ids, _ in row]
    assert encode(tok, texts[0]) in trained and encode(tok, texts[1]) in trained
    waiting = []
    for _ in range(8):
        packer.rows(2)
        waiting.append(sum(len(ids) for _, _, ids in packer.waiting))
    assert max(waiting) <= 3 * 64 + len(encode(tok, texts[2])) and waiting[-1] <= 3 * 64 + 64  # the long one trained


def test_a_packed_forward_equals_each_document_alone(tok, model):
    docs = [tok.encode(t, add_special_tokens=False) for t in ("def f(x): return x", "hello world", "1+2=3")]
    ids, _, pos, mask, _ = to_tensors([[(d, [1] * len(d)) for d in docs]], 64, tok.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0]
        at = 0
        for d in docs:
            alone = model(input_ids=torch.tensor([d])).logits[0]
            torch.testing.assert_close(packed[at:at + len(d)], alone, atol=1e-4, rtol=1e-4)
            at += len(d)


def test_rope_base_change_round_trips_through_the_hf_checkpoint(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from slide.model.tiny import build_model, tiny_config
    m = build_model(tiny_config("test", tok), seed=0).eval()
    x = torch.tensor([tok.encode("a long enough line of text to rotate", add_special_tokens=False)])
    with torch.no_grad():
        before = m(input_ids=x).logits
        set_rope_theta(m, 1e6)
        after = m(input_ids=x).logits
    assert not torch.allclose(before, after)  # the base is used, not just written down
    m.save_pretrained(tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert rope_theta_of(back) == 1e6
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e6
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, after)
    assert tiny_config("test", tok).rope_parameters["rope_theta"] == 10000  # the default is unchanged


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(model):
    muon, adamw = split(model)
    assert set(muon) | set(adamw) == {n for n, _ in model.named_parameters()} and not set(muon) & set(adamw)
    assert all(p.ndim == 2 for p in muon.values())
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.1.mlp.shared_experts.up_proj.weight", "model.layers.3.self_attn.o_proj.weight"):
        assert name in muon
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.mlp.experts.gate_up_proj", "model.layers.0.self_attn.q_proj.bias",
                 "model.norm.weight", "model.layers.0.self_attn.q_norm.weight"):
        assert name in adamw
    opts = Optimizers(model, "muon", 1e-3, 0.1, (0.9, 0.95))
    assert [type(o).__name__ for o in opts.opts] == ["AdamW", "Muon"]
    assert [type(o).__name__ for o in Optimizers(model, "adamw", 1e-3, 0.1, (0.9, 0.95)).opts] == ["AdamW"]


def _cli(capsys, *args) -> tuple[int, list[str]]:
    code = main(["pretrain", *args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_bad_config_and_bad_data_file_give_one_error_line(tmp_path, capsys):
    code, err = _cli(capsys, "name=x")  # no stages
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "stages" in err[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n{"text": "fine too"}\n')
    stage = f"stages=[{{name: s, seq_len: 32, tokens: 64, mixture: [{{name: b, path: {bad}}}]}}]"
    code, err = _cli(capsys, stage, f"out_dir={tmp_path}", "eval.held_out_docs=1")
    assert code == 2 and len(err) == 1 and "bad.jsonl" in err[0] and "not JSON" in err[0]
    code, err = _cli(capsys, stage.replace(str(bad), str(tmp_path / "missing.parquet")), f"out_dir={tmp_path}")
    assert code == 2 and len(err) == 1 and "missing.parquet" in err[0]
    code, err = _cli(capsys, stage.replace("seq_len: 32", "seq_len: 32, packing: greedy"))
    assert code == 2 and len(err) == 1 and "packing" in err[0]
    assert not (tmp_path / "pretrain").exists()  # nothing was started


def test_chain_report_has_a_row_per_stage(tmp_path):
    from slide.pretrain.chain import report
    stage = {"tokens": 1000, "seq_len": 128, "rope_theta": 1e4, "held_out_loss": {"code": 2.5},
             "needle_accuracy": {"512": 0.25}}
    demo = {"sft_steps": 30, "sft_pass@1": 0.2, "rl_steps": 4, "rl_pass@1": 0.3, "rl_pass@1_last3_mean": 0.28,
            "total_seconds": 60.0}
    text = report(tmp_path, {"stages": {"general": stage, "long": {**stage, "rope_theta": 1e6}}, "final": "F"},
                  demo).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| general", "| long", "| sft", "| rl"]
    assert "code 2.500" in rows[0] and "512: 0.25" in rows[0] and "RoPE base 1e+06" in rows[1]
    assert "held-out pass@1 0.200" in rows[2] and "held-out pass@1 0.300" in rows[3]
