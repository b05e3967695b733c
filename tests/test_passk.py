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
