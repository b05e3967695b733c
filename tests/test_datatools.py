"""slide data: synth, measure, filter, dedup; hand-derived expectations, a scripted engine, one tiny-model smoke."""
import json
import random

import pytest
import torch

from slide.cli import _Parser
from slide.datatools import (
    dedup_rows, drop_shortest, filter_rows, measure, normalize_prompt, read_rows, row_problem, row_problems,
    row_verifiers, synth_problems, synth_rows, with_measurements, wrong_number, write_rows,
)
from slide.datatools.cli import add_parser
from slide.engine.inprocess import Completion
from slide.errors import UserError
from slide.model.tokenizer import load_tokenizer
from slide.tasks import Arithmetic, Countdown

VERIFY = {"arithmetic": Arithmetic().verify, "countdown": Countdown().verify}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def slide_data(*argv):
    """`slide data ...` through the parser slide/cli.py builds around add_parser."""
    p = _Parser(prog="slide")
    add_parser(p.add_subparsers(dest="cmd", required=True, parser_class=_Parser))
    a = p.parse_args(["data", *map(str, argv)])
    a.fn(a)


def one_line_error(*argv) -> str:
    with pytest.raises(UserError) as e:
        slide_data(*argv)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedEngine:
    """Answers each prompt with scripted texts: script maps a problem's prompt to its k responses.
    A response ending in <|endoftext|> finished with "stop", any other ran out of tokens ("length")."""

    def __init__(self, tok, script):
        self.tok, self.script, self.version = tok, script, 0

    def generate(self, prompts, params, n=1, generator=None):
        out = []
        for ids in prompts:
            text = self.tok.decode(ids, skip_special_tokens=False)
            (responses,) = [r for p, r in self.script.items() if f"<|user|>\n{p}<|assistant|>" in text]
            assert len(responses) == n
            out.append([Completion(self.tok.encode(r, add_special_tokens=False), [0.0] * 0, "stop"
                                   if r.endswith("<|endoftext|>") else "length") for r in responses])
        return out


# --- synth -------------------------------------------------------------------------------------------

def test_synth_same_seed_same_file(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        slide_data("synth", tmp_path / f"{name}.jsonl", "--tasks", "arithmetic:1-2,countdown:1", "--n", 30,
                   "--wrong-share", 0.2, "--seed", seed)
    a, b, c = ((tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a == b and a != c
    rows = read_rows(str(tmp_path / "a.jsonl"))
    assert len(rows) == 30 and {r["family"] for r in rows} == {"arithmetic", "countdown"}
    assert set(rows[0]) == {"prompt", "answer", "level", "family", "meta", "corrupted"}


def test_synth_held_out_is_distinct_spread_over_levels_and_never_in_training(tmp_path, capsys):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    slide_data("synth", train, "--tasks", "base:1-2,sorting:1", "--n", 400, "--wrong-share", 0.5,
               "--held-out", held, "--held-out-n", 30)
    train_rows, held_rows = read_rows(str(train)), read_rows(str(held))
    keys = [(r["prompt"], r["answer"]) for r in held_rows]
    assert len(train_rows) == 400 and len(held_rows) == 30 and len(set(keys)) == 30
    # three (family, level) pairs drawn in turn, ~ten each (a pair whose draw repeats an earlier one loses that
    # turn: base level 1 has 42 problems); never corrupted
    pairs = [(r["family"], r["level"]) for r in held_rows]
    assert sorted(set(pairs)) == [("base", 1), ("base", 2), ("sorting", 1)]
    assert all(8 <= pairs.count(p) <= 12 for p in set(pairs)) and not any(r["corrupted"] for r in held_rows)
    # base level 1 has 14 numbers x 3 bases = 42 problems; 400 draws would hit its held-out ten ~30 times
    assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in held_rows}
    assert "30 distinct held-out rows, none of them in OUT" in capsys.readouterr().out
    # the held-out draw is the run's held-out stream: the same seed gives the same file
    slide_data("synth", tmp_path / "t2.jsonl", "--tasks", "base:1-2,sorting:1", "--n", 5, "--held-out",
               tmp_path / "h2.jsonl", "--held-out-n", 30)
    assert (tmp_path / "h2.jsonl").read_bytes() == held.read_bytes()


def test_synth_held_out_bad_input(tmp_path):
    out = tmp_path / "t.jsonl"
    assert "--held-out" in one_line_error("synth", out, "--tasks", "base:1", "--n", 5, "--held-out", out)
    assert "--held-out-n needs --held-out" in one_line_error("synth", out, "--tasks", "base:1", "--n", 5,
                                                             "--held-out-n", 10)
    assert "--held-out-n must be a positive integer" in one_line_error(
        "synth", out, "--tasks", "base:1", "--n", 5, "--held-out", tmp_path / "h.jsonl", "--held-out-n", 0)
    # all 42 problems of base level 1 held out: no training row can be drawn, and neither file is written
    msg = one_line_error("synth", out, "--tasks", "base:1", "--n", 5, "--held-out", tmp_path / "h.jsonl",
                         "--held-out-n", 100)
    assert "held-out set covers" in msg and not out.exists() and not (tmp_path / "h.jsonl").exists()


def test_wrong_share_exact_count_and_answers_really_wrong():
    spec, n = "arithmetic:1-3,countdown:1-2", 40
    problems = synth_problems(spec, n, seed=3)
    rows = synth_rows(spec, n, wrong_share=0.25, seed=3)
    assert sum(r["corrupted"] for r in rows) == 10  # 0.25 * 40
    assert [r["prompt"] for r in rows] == [p.prompt for p in problems]  # the share never changes the problems
    for row, clean in zip(rows, problems):
        verify = VERIFY[row["family"]]
        assert verify(clean, clean.solution) == 1.0
        # The reference solution of the clean problem scores 0 under a corrupted row's own verifier.
        assert verify(row_problem(row), clean.solution) == (0.0 if row["corrupted"] else 1.0)
        assert (row["answer"] != clean.answer) == row["corrupted"]
        if row["corrupted"] and row["family"] == "countdown":
            assert row["meta"]["target"] == int(row["answer"]) and 1 <= int(row["answer"]) <= 999
    assert sum(r["corrupted"] for r in synth_rows(spec, 5, wrong_share=0.5, seed=0)) == 3  # 2.5 rounds up
    assert sum(r["corrupted"] for r in synth_rows(spec, 7, wrong_share=1.0, seed=0)) == 7


def test_wrong_number_is_near_and_never_right():
    rng = random.Random(0)
    for value, lo, hi in ((0, 0, None), (7, 0, None), (1, 1, 999), (999, 1, 999), (4321, 0, None)):
        for _ in range(200):
            w = wrong_number(value, rng, lo, hi)
            assert w != value and w >= lo and (hi is None or w <= hi)
            # off by at most 10, or one digit changed (same number of digits)
            assert abs(w - value) <= 10 or (len(str(w)) == len(str(value)) and
                                            sum(x != y for x, y in zip(str(w), str(value))) == 1)


# --- filter -----------------------------------------------------------------------------------------

ROWS = [  # pass_rate, response_len_mean
    {"prompt": "p0", "answer": "0", "pass_rate": 0.0, "response_len_mean": 5.0, "corrupted": False},
    {"prompt": "p1", "answer": "1", "pass_rate": 0.25, "response_len_mean": 1.0},
    {"prompt": "p2", "answer": "2", "pass_rate": 0.5, "response_len_mean": 3.0},
    {"prompt": "p3", "answer": "3", "pass_rate": 1.0, "response_len_mean": 3.0, "corrupted": True},
    {"prompt": "p4", "answer": "4", "pass_rate": 0.75, "response_len_mean": 9.0},
    {"prompt": "p5", "answer": "5", "pass_rate": 0.5, "response_len_mean": 2.0},
]


def prompts(rows):
    return [r["prompt"] for r in rows]


def test_filter_thresholds_by_hand():
    kept, report = filter_rows(ROWS, verified=True)
    assert prompts(kept) == ["p1", "p2", "p3", "p4", "p5"] and report == [("verified", 5, 6)]
    kept, report = filter_rows(ROWS, min_pass_rate=0.25, max_pass_rate=0.5)  # inclusive bounds
    assert prompts(kept) == ["p1", "p2", "p5"]
    assert report == [("pass_rate>=0.25", 5, 6), ("pass_rate<=0.5", 3, 5)]
    kept, _ = filter_rows(ROWS, min_response_len=3, max_response_len=5)
    assert prompts(kept) == ["p0", "p2", "p3"]
    # verified first (drops p0), then the shortest half of the 5 left: floor(2.5) = 2 -> p1 (1.0), p5 (2.0)
    kept, report = filter_rows(ROWS, verified=True, drop_shortest_frac=0.5)
    assert prompts(kept) == ["p2", "p3", "p4"] and report[-1] == ("drop-shortest 0.5", 3, 5)


def test_drop_shortest_by_hand():
    rows = [{"response_len_mean": n} for n in (5, 1, 3, 3, 9, 2)]
    # shortest three: 1, 2, then of the tied 3s the earlier one (index 2)
    assert drop_shortest(rows, 0.5) == [rows[0], rows[3], rows[4]]
    assert drop_shortest(rows, 0.0) == rows
    assert len(drop_shortest([{"response_len_mean": i} for i in range(100)], 0.29)) == 71  # 0.29*100 = 28.999...


def test_filter_cli_and_its_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "m.jsonl", ROWS)
    slide_data("filter", src, tmp_path / "f.jsonl", "--verified", "--drop-shortest", 0.5)
    assert prompts(read_rows(str(tmp_path / "f.jsonl"))) == ["p2", "p3", "p4"]
    assert capsys.readouterr().out.strip().startswith("filter: kept 3/6 rows (verified 5/6, drop-shortest 0.5 3/5)")
    unmeasured = write_jsonl(tmp_path / "raw.jsonl", [{"prompt": "q", "answer": "1"}])
    msg = one_line_error("filter", unmeasured, tmp_path / "o.jsonl", "--min-pass-rate", 0.5)
    assert str(unmeasured) in msg and "'pass_rate'" in msg and "slide data measure" in msg
    assert "'response_len_mean'" in one_line_error("filter", unmeasured, tmp_path / "o.jsonl", "--drop-shortest", .5)
    assert "--drop-shortest" in one_line_error("filter", src, tmp_path / "o.jsonl", "--drop-shortest", 1.5)
    assert "--max-pass-rate" in one_line_error("filter", src, tmp_path / "o.jsonl", "--max-pass-rate", -0.1)
    assert "above" in one_line_error("filter", src, tmp_path / "o.jsonl", "--min-pass-rate", .8, "--max-pass-rate", .2)
    assert "at least one" in one_line_error("filter", src, tmp_path / "o.jsonl")
    assert "kept no row" in one_line_error("filter", src, tmp_path / "o.jsonl", "--min-pass-rate", 0.9,
                                           "--max-response-len", 1)
    assert not (tmp_path / "o.jsonl").exists()


# --- dedup ------------------------------------------------------------------------------------------

def test_dedup_normalisation():
    assert normalize_prompt("  What\tIS  2+2? \n") == "what is 2+2?"
    assert normalize_prompt("ＷＨＡＴ is ２+２?") == "what is 2+2?"  # full-width forms (NFKC)
    assert normalize_prompt("What is\u00a02+2?") == "what is 2+2?"  # no-break space
    assert normalize_prompt("Straße") == normalize_prompt("STRASSE")  # case folding, not lower()
    assert normalize_prompt("ﬁve") == "five"  # ligature
    rows = [{"prompt": p, "answer": str(i)} for i, p in enumerate(
        ["What is 2+2?", "  what  IS 2+2? ", "ＷＨＡＴ is ２+２?", "What is 2+3?", "What is 2 + 2?",
         "what is 2+3?"])]
    kept, dropped = dedup_rows(rows)
    assert [r["answer"] for r in kept] == ["0", "3", "4"] and dropped == 3  # "2 + 2" differs by inner spaces


def test_dedup_cli_keeps_extra_fields_and_parquet(tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "A b", "answer": 1, "level": 2, "src": "x", "tags": [1]},
                                             {"prompt": "a  B", "answer": 2, "src": "y"}])
    slide_data("dedup", src, tmp_path / "u.parquet")
    assert "dropped 1 duplicate" in capsys.readouterr().out
    assert read_rows(str(tmp_path / "u.parquet")) == [{"prompt": "A b", "answer": "1", "level": 2, "src": "x",
                                                       "tags": [1]}]


# --- io -------------------------------------------------------------------------------------------------

def test_parquet_round_trip_and_atomic_write(tmp_path):
    rows = synth_rows("arithmetic:1,countdown:1", 12, wrong_share=0.5, seed=0)
    write_rows(rows, str(tmp_path / "s.parquet"))
    write_rows(rows, str(tmp_path / "s.jsonl"))
    assert read_rows(str(tmp_path / "s.parquet")) == read_rows(str(tmp_path / "s.jsonl"))
    out = tmp_path / "o.parquet"
    write_rows(rows, str(out))
    before = out.read_bytes()
    bad = [{"prompt": "a", "answer": "1", "x": 1}, {"prompt": "b", "answer": "2", "x": "text"}]  # mixed column
    with pytest.raises(UserError, match="field 'x'"):
        write_rows(bad, str(out))
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "o.parquet", "s.jsonl", "s.parquet"]  # old OUT intact, no temporary file left


def test_bad_input_is_one_line(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    original = src.read_bytes()
    for verb in (["dedup"], ["filter", "--verified"], ["measure", "--model", tmp_path, "--k", 1]):
        msg = one_line_error(verb[0], src, tmp_path / "." / "in.jsonl", *verb[1:])
        assert "is the input file" in msg
    assert src.read_bytes() == original
    assert "not found" in one_line_error("dedup", tmp_path / "missing.jsonl", tmp_path / "o.jsonl")
    assert "allowed: .jsonl, .parquet" in one_line_error("dedup", src, tmp_path / "o.csv")
    assert "--k must be >= 1" in one_line_error("measure", src, tmp_path / "o.jsonl", "--model", tmp_path, "--k", 0)
    assert "--temperature" in one_line_error("measure", src, tmp_path / "o.jsonl", "--model", tmp_path, "--k", 2,
                                             "--temperature", -1)
    assert "no such checkpoint" in one_line_error("measure", src, tmp_path / "o.jsonl", "--model", tmp_path / "x",
                                                  "--k", 2)
    assert "invalid int value" in one_line_error("measure", src, tmp_path / "o.jsonl", "--model", tmp_path, "--k", "x")
    assert "unknown task 'sudoku'" in one_line_error("synth", tmp_path / "s.jsonl", "--tasks", "sudoku", "--n", 3)
    assert "'code' cannot be synthesised" in one_line_error("synth", tmp_path / "s.jsonl", "--tasks", "code", "--n", 3)
    assert "--n must be" in one_line_error("synth", tmp_path / "s.jsonl", "--tasks", "arithmetic", "--n", 0)
    assert "--wrong-share" in one_line_error("synth", tmp_path / "s.jsonl", "--tasks", "arithmetic", "--n", 3,
                                             "--wrong-share", 1.5)
    assert "invalid choice: 'shuffle'" in one_line_error("shuffle", src)
    assert "unrecognized arguments: --fast" in one_line_error("dedup", src, tmp_path / "o.jsonl", "--fast")
    countdown_without_meta = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "answer": "6", "family": "countdown"}])
    with pytest.raises(UserError, match=r"c.jsonl row 1: family 'countdown' needs meta.numbers, meta.target"):
        row_problems(read_rows(str(countdown_without_meta)), str(countdown_without_meta))


# --- measure ----------------------------------------------------------------------------------------

def test_measure_with_scripted_completions(tok):
    rows = [
        {"prompt": "What is 2+3?", "answer": "5", "level": 1, "family": "arithmetic", "meta": {}},
        {"prompt": "Use the numbers 2 3 to make 6.", "answer": "6", "level": 1, "family": "countdown",
         "meta": {"numbers": [2, 3], "target": 6}},
        {"prompt": "Half?", "answer": "\\frac{1}{2}", "level": 1},  # a plain dataset row: math-verify
        {"prompt": "What is 9-9?", "answer": "0", "level": 1, "family": "arithmetic", "meta": {}},
    ]
    script = {
        "What is 2+3?": ["</think>5<|endoftext|>", "</think>6<|endoftext|>", "</think>\\boxed{5}<|endoftext|>",
                         "<think>2+3=5"],  # the last one truncated and unanswered: 2 of 4
        # any expression reaching 6 counts; 3+3 uses 3 twice; "6" alone uses no given number
        "Use the numbers 2 3 to make 6.": ["</think>2*3<|endoftext|>", "</think>3+3<|endoftext|>",
                                           "</think>6<|endoftext|>", "</think>3*2=6<|endoftext|>"],
        "Half?": ["</think>0.5<|endoftext|>"] * 4,
        "What is 9-9?": ["</think>1<|endoftext|>"] * 4,
    }
    problems = row_problems(rows)
    stats = measure(ScriptedEngine(tok, script), tok, problems, row_verifiers(), k=4, prompts_per_batch=3)
    assert [s["correct"] for s in stats] == [2, 2, 4, 0]
    assert [s["pass_rate"] for s in stats] == [0.5, 0.5, 1.0, 0.0]
    # </think>, <think> and <|endoftext|> are one token each, every other character one: 3, 3, 11, 6 tokens
    assert stats[0]["response_len_mean"] == (3 + 3 + 11 + 6) / 4
    assert stats[0]["truncated_rate"] == 0.25 and stats[1]["truncated_rate"] == 0.0
    # unbiased pass@2 from 4 samples with 2 correct: 1 - C(2,2)/C(4,2) = 5/6
    assert abs(stats[0]["pass@2"] - 5 / 6) < 1e-12 and stats[0]["pass@4"] == 1.0
    assert set(stats[3]) == {"samples", "correct", "pass_rate", "pass@2", "pass@4", "response_len_mean",
                             "truncated_rate"} and stats[3]["pass@4"] == 0.0
    merged = with_measurements({"prompt": "x", "pass@8": 0.3, "pass_rate": 0.1, "src": 1}, stats[0])
    assert "pass@8" not in merged and merged["pass_rate"] == 0.5 and merged["src"] == 1


def test_synth_measure_verified_drops_exactly_the_corrupted_rows(tok):
    """An oracle that always writes the right solution: the --verified pool is exactly the uncorrupted rows."""
    spec, n = "arithmetic:1-2,countdown:1", 16
    clean = synth_problems(spec, n, seed=5)
    rows = synth_rows(spec, n, wrong_share=0.5, seed=5)
    script = {p.prompt: [f"</think>{p.solution}<|endoftext|>"] * 2 for p in clean}
    stats = measure(ScriptedEngine(tok, script), tok, row_problems(rows), row_verifiers(), k=2)
    kept, _ = filter_rows([with_measurements(r, s) for r, s in zip(rows, stats)], verified=True)
    assert len(kept) == 8 and not any(r["corrupted"] for r in kept)


def test_measure_tiny_model_smoke(tmp_path, tok, capsys):
    from slide.engine.inprocess import InProcessEngine
    from slide.model.tiny import build_model, tiny_config
    model = build_model(tiny_config("test", tok), seed=0)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    src = tmp_path / "in.jsonl"
    write_rows(synth_rows("arithmetic:1,countdown:1", 4, seed=0), str(src))
    slide_data("measure", src, tmp_path / "m.jsonl", "--model", tmp_path / "model", "--k", 2,
               "--max-new-tokens", 6, "--prompts-per-batch", 3)
    assert "measure: 4 rows, k=2" in capsys.readouterr().out
    measured = read_rows(str(tmp_path / "m.jsonl"))
    assert all(r["pass_rate"] in (0.0, 0.5, 1.0) and 0 < r["response_len_mean"] <= 6 for r in measured)

    class Recorder(InProcessEngine):  # keeps every completion, to re-verify it by hand
        def __init__(self, *args):
            super().__init__(*args)
            self.seen = []

        def generate(self, prompts, params, n=1, generator=None):
            out = super().generate(prompts, params, n, generator)
            self.seen += out
            return out

    engine, problems = Recorder(model.eval(), tok.pad_token_id), row_problems(read_rows(str(src)))
    stats = measure(engine, tok, problems, row_verifiers(), k=2, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))
    for problem, group, s in zip(problems, engine.seen, stats):
        rewards = [row_verifiers()[problem.family](problem, tok.decode(c.tokens, skip_special_tokens=False))
                   for c in group]
        assert s["pass_rate"] == sum(rewards) / 2 and s["response_len_mean"] == sum(len(c.tokens) for c in group) / 2
