"""The `slide data` verbs; slide/cli.py registers them with `add_parser(subparsers)`.

    slide data synth OUT --tasks SPEC --n N [--wrong-share F] [--seed S] [--held-out FILE [--held-out-n M]]
    slide data measure IN OUT --model DIR --k K [--temperature T] [--max-new-tokens L]
                              [--prompts-per-batch B] [--seed S] [--device D] [--dtype auto|fp32|bf16]
    slide data filter IN OUT [--verified] [--min-pass-rate X] [--max-pass-rate Y] [--min-response-len N]
                             [--max-response-len N] [--drop-shortest F]
    slide data dedup IN OUT

IN and OUT are .jsonl or .parquet; OUT is written atomically and is never IN. Each verb prints one
summary line; bad input raises slide.errors.UserError (one line `error: ...`, exit status 2).
"""
from __future__ import annotations

from pathlib import Path

from slide.datatools.dedup import dedup_rows
from slide.datatools.filters import filter_rows
from slide.datatools.io import check_output, read_rows, write_rows
from slide.device import add_device_arguments
from slide.errors import UserError


def cmd_synth(a) -> None:
    from slide.datatools.synth import clean_rows, held_out_problems, synth_rows
    check_output(a.out)
    held = []
    if a.held_out is None and a.held_out_n is not None:
        raise UserError("--held-out-n needs --held-out FILE (where the held-out rows go)")
    if a.held_out is not None:
        check_output(a.held_out)
        if Path(a.held_out).resolve() == Path(a.out).resolve():
            raise UserError(f"--held-out '{a.held_out}' is OUT; give the held-out rows a file of their own")
        held = held_out_problems(a.tasks, 200 if a.held_out_n is None else a.held_out_n, a.seed)
    rows = synth_rows(a.tasks, a.n, a.wrong_share, a.seed, exclude=held)
    write_rows(rows, a.out)  # both files are checked and drawn before either is written
    if held:
        try:
            write_rows(clean_rows(held), a.held_out)
        except BaseException:  # one file without the other would look like a finished split
            Path(a.out).unlink(missing_ok=True)
            raise
    wrong = sum(r["corrupted"] for r in rows)
    also = f"; {len(held)} distinct held-out rows, none of them in OUT -> {a.held_out}" if held else ""
    print(f"synth: {len(rows)} rows ({wrong} with a wrong answer) -> {a.out}{also}")


def cmd_measure(a) -> None:
    from slide.datatools.pass_rates import measure, with_measurements
    from slide.device import generator, precision_for, resolve_device
    from slide.engine import DTYPES
    from slide.datatools.problems import row_problems, row_verifiers
    from slide.engine.inprocess import InProcessEngine
    from slide.model.load import load_with_tokenizer
    from slide.progress import StepProgress
    for flag, value, low in (("--k", a.k, 1), ("--max-new-tokens", a.max_new_tokens, 1),
                             ("--prompts-per-batch", a.prompts_per_batch, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if not a.temperature >= 0:  # also refuses nan
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {a.temperature}")
    device = resolve_device(a.device)
    check_output(a.out, a.inp)
    rows = read_rows(a.inp)
    problems = row_problems(rows, a.inp)
    model, tok = load_with_tokenizer(a.model, "--model", DTYPES[precision_for(a.dtype, device)], device)
    with StepProgress("measure", len(problems), ["pass_rate"]) as bar:
        stats = measure(InProcessEngine(model, tok.pad_token_id), tok, problems, row_verifiers(), a.k,
                        temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                        generator=generator(device, a.seed), prompts_per_batch=a.prompts_per_batch,
                        progress=bar.update)
    write_rows([with_measurements(r, s) for r, s in zip(rows, stats)], a.out, source=a.inp)
    n = len(stats)
    mean = sum(s["pass_rate"] for s in stats) / n
    none = sum(s["correct"] == 0 for s in stats)
    every = sum(s["correct"] == a.k for s in stats)
    length = sum(s["response_len_mean"] for s in stats) / n
    print(f"measure: {n} rows, k={a.k}: mean pass_rate {mean:.3f}, all wrong {none}, all right {every}, "
          f"mean response {length:.1f} tokens -> {a.out}")


def cmd_filter(a) -> None:
    check_output(a.out, a.inp)
    rows = read_rows(a.inp)
    kept, report = filter_rows(rows, verified=a.verified, min_pass_rate=a.min_pass_rate,
                               max_pass_rate=a.max_pass_rate, min_response_len=a.min_response_len,
                               max_response_len=a.max_response_len, drop_shortest_frac=a.drop_shortest,
                               label=a.inp)
    steps = ", ".join(f"{name} {k}/{of}" for name, k, of in report)
    if not kept:
        raise UserError(f"filter kept no row of {a.inp} ({steps}); nothing written, loosen the criteria")
    write_rows(kept, a.out, source=a.inp)
    print(f"filter: kept {len(kept)}/{len(rows)} rows ({steps}) -> {a.out}")


def cmd_dedup(a) -> None:
    check_output(a.out, a.inp)
    rows = read_rows(a.inp)
    kept, dropped = dedup_rows(rows)
    write_rows(kept, a.out, source=a.inp)
    print(f"dedup: dropped {dropped} duplicate prompts, kept {len(kept)}/{len(rows)} rows -> {a.out}")


def add_parser(subparsers) -> None:
    """Register `data` and its verbs on the `slide` sub-parsers; each verb sets `fn`."""
    d = subparsers.add_parser("data", help="dataset quality tools: synth, measure, filter, dedup")
    verbs = d.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=type(d))

    s = verbs.add_parser("synth", help="generated dataset, optionally with a share of wrong reference answers")
    s.add_argument("out", metavar="OUT", help="output .jsonl or .parquet")
    s.add_argument("--tasks", required=True, help="generated families, e.g. arithmetic:1-2,countdown:1")
    s.add_argument("--n", type=int, required=True, help="number of rows")
    s.add_argument("--wrong-share", type=float, default=0.0, help="share of rows given a wrong answer (0..1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--held-out", metavar="FILE", help="also write distinct held-out rows here, none of them in OUT "
                   "(drawn in turn from each family's levels; right answers only)")
    s.add_argument("--held-out-n", type=int, default=None, help="held-out rows (default 200; fewer where a level "
                   "has fewer problems)")
    s.set_defaults(fn=cmd_synth)

    m = verbs.add_parser("measure", help="sample K responses per row: pass_rate, pass@j, response_len_mean")
    m.add_argument("inp", metavar="IN")
    m.add_argument("out", metavar="OUT")
    m.add_argument("--model", required=True, help="checkpoint folder (Hugging Face format)")
    m.add_argument("--k", type=int, required=True, help="samples per prompt")
    m.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    m.add_argument("--max-new-tokens", type=int, default=96)
    m.add_argument("--prompts-per-batch", type=int, default=64)
    m.add_argument("--seed", type=int, default=0)
    add_device_arguments(m)
    m.set_defaults(fn=cmd_measure)

    f = verbs.add_parser("filter", help="keep rows by measured pass rate, verification, response length")
    f.add_argument("inp", metavar="IN")
    f.add_argument("out", metavar="OUT")
    f.add_argument("--verified", action="store_true", help="keep rows some sample answered right (pass_rate > 0)")
    f.add_argument("--min-pass-rate", type=float, metavar="X", help="inclusive, 0..1")
    f.add_argument("--max-pass-rate", type=float, metavar="Y", help="inclusive, 0..1")
    f.add_argument("--min-response-len", type=float, metavar="N", help="mean response tokens, inclusive")
    f.add_argument("--max-response-len", type=float, metavar="N", help="mean response tokens, inclusive")
    f.add_argument("--drop-shortest", type=float, default=0.0, metavar="F",
                   help="drop the share F (0 <= F < 1) of rows with the shortest responses")
    f.set_defaults(fn=cmd_filter)

    u = verbs.add_parser("dedup", help="drop repeated prompts (NFKC, case, whitespace), keeping the first")
    u.add_argument("inp", metavar="IN")
    u.add_argument("out", metavar="OUT")
    u.set_defaults(fn=cmd_dedup)
