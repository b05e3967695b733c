"""The needle-retrieval documents (slide/pretrain/corpora.py, version 2): one-token keys, unique in a document and
absent from the haystack; the answer is the asked key's value; training documents answer their questions in place.
And the copy documents that come first: a string repeated after a gap; the shipped pretrain configs load; reasoning
traces that never hold an evaluated problem."""
import json
import random
import re

from slide.pretrain.corpora import NEEDLE_KEYS, build, needle_doc, needle_docs

NEEDLE = re.compile(r"^([A-Z])(\d\d)$")


def _parse(doc: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(needles key -> value, filler lines, question lines) of a document."""
    needles, filler, questions = {}, [], []
    for line in doc.split("\n"):
        if line.startswith("?"):
            questions.append(line)
        elif m := NEEDLE.match(line):
            assert m[1] not in needles, f"key {m[1]} twice"
            needles[m[1]] = m[2]
        else:
            filler.append(line)
    return needles, filler, questions


def test_a_document_holds_one_needle_per_20_tokens_and_asks_one_of_its_keys():
    for seed in range(50):
        doc, answer = needle_doc(random.Random(seed), 128)
        needles, filler, questions = _parse(doc)
        # 128 // 20 = 6 needles; 2 answer characters make the document and its answer 128 tokens exactly
        assert len(needles) == 6 and len(doc) + len(answer) == 128
        assert questions == [questions[-1]] and re.fullmatch(r"\?[A-Z]", questions[-1])
        assert needles[questions[-1][1]] == answer  # the answer is the asked key's value
        assert not any(c in NEEDLE_KEYS or c.isdigit() or c in "?=" for c in "".join(filler))  # keys only in needles


def test_long_documents_keep_to_the_26_keys_and_short_ones_keep_one():
    assert len(_parse(needle_doc(random.Random(0), 1000)[0])[0]) == 26  # 1000 // 20 = 50, capped at 26 letters
    doc, answer = needle_doc(random.Random(0), 16)
    assert len(_parse(doc)[0]) == 1 and len(doc) + len(answer) == 16


def test_earlier_questions_are_answered_in_place_with_their_keys_values():
    doc, answer = needle_doc(random.Random(3), 200, queries=4)  # 10 needles, 4 distinct keys asked
    needles, _, questions = _parse(doc)
    assert len(questions) == 4 and len({q[1] for q in questions}) == 4
    for q in questions[:-1]:
        assert q[2:] == needles[q[1]]
    assert needles[questions[-1][1]] == answer and len(doc) + len(answer) == 200


def test_training_documents_fit_a_row_with_their_end_token_and_ask_every_key():
    docs = needle_docs(512, count=60, seed=1)
    assert all(64 <= len(d) <= 511 for d in docs)
    counts = set()
    for d in docs:
        needles, _, questions = _parse(d)
        assert 1 <= len(needles) <= min(26, len(d) // 20) and len(questions) == len(needles)
        assert all(q[2:] == needles[q[1]] for q in questions)  # the last one carries its answer too
        counts.add(len(needles))
    assert 1 in counts and max(counts) >= 20  # from one key (the stepping stone) to many


def test_the_corpus_file_name_carries_the_generator_version(tmp_path):
    path = build("needle:128", str(tmp_path), tok=None)
    assert path.endswith("needle_128_v2_s0.jsonl")


def test_copy_documents_repeat_their_24_letters_and_digits_after_a_gap():
    from slide.pretrain.corpora import copy_docs
    docs = copy_docs(count=30, seed=2)
    for d in docs:
        a, gap, again = d.split("|")
        assert a == again and len(a) == 24 and a.isalnum() and a.isascii() and 0 <= len(gap) <= 40
    assert any(c.isdigit() for d in docs for c in d)  # the digits needle answers are made of


def test_shipped_pretrain_configs_load_and_the_retrieval_recipe_ends_at_4x_its_first_context():
    from pathlib import Path

    from slide.config import load_config
    from slide.pretrain.config import PretrainConfig
    configs = sorted((Path(__file__).resolve().parents[1] / "slide" / "configs").glob("pretrain*.yaml"))
    assert {c.name for c in configs} >= {"pretrain_tiny.yaml", "pretrain_retrieval.yaml", "pretrain_copy.yaml"}
    loaded = {c.stem: load_config(PretrainConfig, str(c)) for c in configs}
    retrieval = loaded["pretrain_retrieval"]
    lengths = [s.seq_len for s in retrieval.stages]
    assert lengths[-1] == 4 * lengths[0] and retrieval.eval.needle_lengths[-1] == lengths[-1]
    assert retrieval.stages[0].mixture[0].path == "builtin:copy"  # the induction head first
    assert loaded["pretrain_copy"].model.size == "demo"  # the base the demo-size SFT configs take as model.init


def test_reasoning_traces_never_hold_a_problem_sft_or_rl_evaluates_on(tok, tmp_path):
    from slide.model.tokenizer import chat_prompt
    from slide.rl.data import eval_problems
    from slide.tasks import parse_task_specs
    path = build("reasoning", str(tmp_path), tok)
    assert path.endswith("reasoning_v2_s0.jsonl")
    heads = {json.loads(line)["text"].split("<|assistant|>")[0] for line in open(path)}  # each document's prompt
    assert len(heads) > 1900
    for spec in ("arithmetic:2", "arithmetic:1", "countdown:3", "arithmetic:1-3,countdown:2-3"):  # the demo's first
        held = [chat_prompt(tok, [{"role": "user", "content": p.prompt}]) for p in eval_problems(parse_task_specs(spec), 200, 0)]
        assert not [h for h in held if h.split("<|assistant|>")[0] in heads], spec
