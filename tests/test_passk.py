from slide.eval.passk import pass_at_k


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 4) == 1.0
    assert abs(pass_at_k(4, 1, 1) - 0.25) < 1e-12
    assert abs(pass_at_k(4, 1, 2) - 0.5) < 1e-12  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than 3 wrong: any 3 include a correct one


def _result(k, rows):
    """An evaluate()-shaped result from (family, level, prompts, pass@1, pass@k) rows."""
    total = sum(r[2] for r in rows)
    summary = {"pass@1": sum(r[2] * r[3] for r in rows) / total, f"pass@{k}": sum(r[2] * r[4] for r in rows) / total}
    return {"k": k, "summary": summary,
            "rows": [{"family": f, "level": lv, "prompts": n, "pass@1": p1, f"pass@{k}": pk} for f, lv, n, p1, pk in rows]}


def test_eval_table_has_one_pass_at_1_column_when_k_is_1(capsys):
    from slide.eval.table import print_eval
    print_eval(_result(1, [("arithmetic", 2, 200, 0.275, 0.275)]))
    header = next(line for line in capsys.readouterr().out.splitlines() if "pass@1" in line)
    assert header.count("pass@1") == 1
    print_eval(_result(8, [("arithmetic", 2, 200, 0.188, 0.54)]))
    out = capsys.readouterr().out
    assert "pass@8" in out and "0.540" in out


def test_before_after_table_gives_the_change_in_points(capsys):
    from slide.eval.table import print_before_after
    before = _result(1, [("arithmetic", 1, 100, 0.5, 0.5), ("arithmetic", 2, 100, 0.25, 0.25)])
    after = _result(1, [("arithmetic", 1, 100, 0.55, 0.55), ("arithmetic", 2, 100, 0.38, 0.38)])
    print_before_after(before, after, ("SFT", "RL"), title="t")
    rows = {line.split("│")[2].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 5}
    # level 1: 0.50 -> 0.55 = +5.0 points; level 2: 0.25 -> 0.38 = +13.0; all 200: 0.375 -> 0.465 = +9.0
    assert "+5.0" in rows["1"] and "+13.0" in rows["2"] and "+9.0" in rows[""]
    before["summary"] |= {"chance_pass@1": 0.3, "lucky": 1.0}  # evaluated with chance: the line under the table
    after["summary"] |= {"chance_pass@1": 0.05, "lucky": 0.0}
    print_before_after(before, after, ("SFT", "RL"), title="t")
    assert capsys.readouterr().out.splitlines()[-1] == "chance: SFT 0.300, RL 0.050  [SFT lucky: mostly guesses]"


def test_pass_at_j_and_avg_from_n_samples_hand_values():
    """Two problems with 4 samples each, 2 and 0 correct: pass@1 = (2/4 + 0) / 2 = 0.25; pass@2 = (1 - C(2,2)/C(4,2)
    + 0) / 2 = (5/6) / 2 = 5/12; pass@4 = (1 + 0) / 2 = 0.5; avg@4 = 2 / 8 = 0.25."""
    from slide.eval.passk import score_cells
    rows, summary = score_cells({("arithmetic", 1): [2, 0]}, n=4, ks=(1, 2, 4))
    assert summary["pass@1"] == 0.25 and abs(summary["pass@2"] - 5 / 12) < 1e-12 and summary["pass@4"] == 0.5
    assert summary["avg@4"] == 0.25 and rows[0]["prompts"] == 2 and abs(rows[0]["pass@2"] - 5 / 12) < 1e-12
    # two cells, each problem weighs the same: level 2 has one problem with 3 of 4 correct
    _, summary = score_cells({("arithmetic", 1): [2, 0], ("arithmetic", 2): [3]}, n=4, ks=(1, 2))
    assert abs(summary["pass@1"] - (0.5 + 0 + 0.75) / 3) < 1e-12  # 7/12
    assert abs(summary["pass@2"] - (5 / 6 + 0 + 1) / 3) < 1e-12  # 1 - C(1,2)/C(4,2) = 1 for 3 correct
    assert summary["arithmetic/L2/pass@1"] == 0.75


def test_evaluate_samples_n_and_scores_every_k(tok, capsys):
    """evaluate() end to end on an engine that answers problem i right in its first `right[i]` samples."""
    import random

    from slide.engine.inprocess import Completion
    from slide.eval.passk import eval_metrics, evaluate
    from slide.eval.table import print_eval
    from slide.model.tokenizer import stop_token_ids
    from slide.tasks import Arithmetic
    task, rng = Arithmetic(), random.Random(0)
    problems = [task.generate(rng, 1) for _ in range(2)]
    right = [3, 1]

    class Answers:
        version = 0

        def generate(self, prompts, params, n=1, generator=None):
            assert params.temperature > 0 and len(prompts) == 2 and n == 4  # sampled, n per problem
            out = []
            for i, _ in enumerate(prompts):
                texts = [problems[i].answer if j < right[i] else "-1" for j in range(n)]
                ids = [tok.encode(f"<think>x</think>\n{t}", add_special_tokens=False) + [stop_token_ids(tok)[0]]
                       for t in texts]
                out.append([Completion(x, [0.0] * len(x), "stop") for x in ids])
            return out
    result = evaluate(Answers(), tok, problems, {"arithmetic": task.verify}, n=4, ks=(2, 4), chance=True)
    s = result["summary"]
    assert result["ks"] == [1, 2, 4] and result["n"] == 4 and result["k"] == 4
    assert s["pass@1"] == s["avg@4"] == 0.5  # (3/4 + 1/4) / 2
    assert abs(s["pass@2"] - (1.0 + 0.5) / 2) < 1e-12  # 3 right: 1; 1 right: 1 - C(3,2)/C(4,2) = 1/2
    assert s["pass@4"] == 1.0
    # chance: each problem's samples scored against the other's (both level 1); their answers differ and neither
    # is -1, so no sample is right for the decoy. Per-problem differences 3/4 and 1/4: mean 1/2, se sqrt(1/8 / 2)
    assert problems[0].answer != problems[1].answer and "-1" not in (problems[0].answer, problems[1].answer)
    assert s["chance_pass@1"] == 0.0 and s["above_chance"] == 0.5 and abs(s["above_chance_se"] - 0.25) < 1e-12
    assert s["lucky"] == 0.0 and eval_metrics(s) == {"eval_pass@1": 0.5, "eval_chance_pass@1": 0.0, "eval_lucky": 0.0}
    print_eval(result)
    assert "chance (the answers scored against other prompts' problems): 0.000; pass@1 above it: +0.500 +- 0.250" \
        in " ".join(capsys.readouterr().out.split())
    # a verifier that raises on another problem's right answer (only the decoy verdicts see one): the eval's
    # own counts stay clean, and a decoy verdict that raised scores 0
    result = evaluate(Answers(), tok, problems, {"arithmetic": raises_on_another_answer}, n=4, chance=True)
    assert result["reward_errors"] == 0 and result["summary"]["chance_pass@1"] == 0.0
    assert result["summary"]["pass@1"] == 0.5


def raises_on_another_answer(problem, response: str) -> float:
    """Arithmetic's verdict, but a response that is neither the problem's answer nor -1 raises."""
    from slide.tasks import Arithmetic
    from slide.tasks.answer import final_answer
    if final_answer(response).strip() not in (problem.answer, "-1"):
        raise ValueError("a decoy's verdict")
    return Arithmetic().verify(problem, response)


def test_eval_refuses_fewer_samples_than_k(capsys, tmp_path):
    from slide.cli import main
    assert main(["eval", "--model", str(tmp_path), "--data", "arithmetic:1", "--k", "1", "8", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --k 1 8 --n 4") and err.count("\n") == 1
