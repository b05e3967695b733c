"""slide arena: Bradley-Terry on synthetic games recovers known strengths; the judge's two orders cancel position
bias; a verifier-judged arena ranks a trained checkpoint over an untrained one; bad specs are one error line."""
import json

import numpy as np
import pytest

from slide.eval.arena import judge_verdict, parse_player, run
from slide.eval.bradley_terry import bootstrap, fit, wilson


def synthetic_games(theta: list[float], per_pair: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"p{i}" for i in range(len(theta))]
    games = []
    for i in range(len(theta)):
        for j in range(i + 1, len(theta)):
            p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
            games += [(names[i], names[j], float(w)) for w in rng.random(per_pair) < p]
    return games, names


def test_bradley_terry_recovers_order_and_scale_of_known_strengths():
    truth = np.array([0.0, 0.7, 1.4, -1.0])
    games, names = synthetic_games(list(truth), per_pair=1500)
    theta = fit(games, names)
    truth = truth - truth.mean()  # the model fixes strengths up to an offset: compare centred
    assert list(np.argsort(theta)) == list(np.argsort(truth))
    assert np.abs(theta - truth).max() < 0.12  # log-odds scale recovered, not just the order
    low, high = bootstrap(games, names, rounds=60, seed=1)
    assert np.all(low < theta) and np.all(theta < high) and np.all(high - low < 0.4)


def test_ties_count_half_and_an_unbeaten_player_stays_finite():
    theta = fit([("a", "b", 0.5)] * 10, ["a", "b"])
    assert abs(theta[0] - theta[1]) < 1e-9
    theta = fit([("a", "b", 1.0)] * 10, ["a", "b"])
    assert np.isfinite(theta).all() and theta[0] > theta[1] + 3
    lo, hi = wilson(0.5, 100)  # 0.5 +- 1.96 * 0.05, pulled slightly to the centre
    assert abs(lo - 0.404) < 0.002 and abs(hi - 0.596) < 0.002


def test_judge_in_both_orders_cancels_position_bias():
    assert judge_verdict(lambda prompt: "A", "q", "x", "y") == 0.5  # always the first shown: no verdict

    def fair(prompt):  # prefers the answer that says "right", wherever it is shown
        a = prompt.split("Answer A:")[1].split("Answer B:")[0]
        return "<think>compare</think>A" if "right" in a else "B"
    assert judge_verdict(fair, "q", "right", "wrong") == 1.0
    assert judge_verdict(fair, "q", "wrong", "right") == 0.0


def test_verifier_arena_ranks_the_trained_checkpoint_first(sft_model, tmp_path, tok):
    from slide.model.tiny import build_model, tiny_config
    fresh = tmp_path / "fresh"
    build_model(tiny_config("test", tok), seed=0).save_pretrained(fresh)
    tok.save_pretrained(fresh)
    import torch
    result = run([f"sft={sft_model[0]}", f"fresh={fresh}"], "arithmetic:1", prompts=24, seed=0, judge=None,
                 max_new_tokens=48, out=tmp_path / "arena", device=torch.device("cpu"), dtype=torch.float32, rounds=50)
    [pair] = result["pairs"]
    assert (pair["a"], pair["b"]) == ("sft", "fresh") and pair["games"] == 24
    assert pair["win"] >= pair["loss"] + 3 and pair["win_rate"] > 0.5  # most games tie: both wrong
    assert [r["player"] for r in result["ratings"]] == ["sft", "fresh"]
    sft, fresh = result["ratings"]
    assert sft["ci95"][0] > fresh["rating"] and fresh["ci95"][1] < sft["rating"]
    saved = json.loads((tmp_path / "arena" / "arena.json").read_text())
    assert len(saved["games"]) == 24 and (tmp_path / "arena" / "arena.png").stat().st_size > 0


@pytest.mark.parametrize("args, says", [
    (["only=/nowhere"], "not a checkpoint folder"),
    (["a=http://127.0.0.1:9/v1", "b=http://127.0.0.1:9/v1#m"], "needs its model name"),
    (["x=http://127.0.0.1:9/v1#m", "x=http://127.0.0.1:9/v1#n"], "two players are named 'x'"),
    (["a=http://127.0.0.1:9/v1#m"], "at least two players"),
])
def test_invalid_arena_spec_is_one_error_line(args, says, capsys):
    from slide.cli import main
    assert main(["arena", *args, "--data", "arithmetic:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_player_specs():
    assert parse_player("http://h:1/v1/#m").name == "m" and parse_player("http://h:1/v1/#m").source == "http://h:1/v1"
    assert parse_player("j=http://h:1/v1#a=b").model == "a=b"
