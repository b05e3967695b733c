"""The `slide` command.

    slide demo                                   # SFT -> RL -> eval on the demo-size tiny GLM, CPU
    slide pretrain CONFIG [key=value ...]        # staged pre-/mid-training (slide/pretrain/); --resume RUN_DIR
    slide pretrain CONFIG --chain                # ... then SFT -> RL -> eval from it, one report
    slide sft CONFIG [key=value ...]             # cold-start SFT; --resume RUN_DIR
    slide rl CONFIG [key=value ...]              # colocated synchronous RL
    slide rl --resume RUN_DIR                    # continue a killed run
    slide eval --model DIR --data SPEC [--n N] [--k 1 4 8]   # pass@k (unbiased, n >= k samples) and avg@n
                                                             # per family and level (--device, --dtype)
    slide ready CHECKPOINT --data SPEC [--n 8]   # before RL: does sampling give GRPO a reward signal?
    slide bench --model DIR --prompts P --gens G --len L --steps S
    slide data synth|measure|filter|dedup ...    # curate datasets (slide/datatools/)
    slide ablate NAME                            # a GLM RL lesson, both arms x seeds (slide/ablate/)
    slide serve CHECKPOINT [--host H] [--port N] # an OpenAI-compatible API over the engine (slide/serve/)
    slide arena A=DIR B=URL#MODEL --data SPEC    # pairwise games, win/tie/loss, Bradley-Terry (slide/eval/arena.py;
                                                 # agent families: whole episodes, slide/eval/agent_arena.py)
    slide view RUNS_DIR [--port N]               # a local web page over runs: charts, trajectory browser

Every command that runs a model takes a device: `device=auto|cpu|cuda|cuda:N` in sft/rl configs, `--device` for
the others (auto: CUDA when present). Bad input (config, data, checkpoint, flag, a device this machine lacks)
prints one line `error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slide.device import add_device_arguments, precision_for, resolve_device
from slide.engine import DTYPES, ENGINES, set_threads
from slide.errors import RunStopped, UserError
from slide.preflight import check_inputs


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message}")


def _config_args(a) -> tuple[str | None, list[str]]:
    """`slide rl steps=5` has no file: a first positional with '=' that is not a file is an override."""
    if a.config and "=" in a.config and not Path(a.config).exists():
        return None, [a.config, *a.overrides]
    return a.config, list(a.overrides)


def _quiet() -> None:
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_sft(a) -> None:
    from slide import sft
    from slide.config import SFTConfig, dump_config, load_config
    from slide.model.lora import check_lora
    from slide.progress import StepProgress
    from slide.rundir import RunDir
    if a.resume:
        RunDir.config_of(a.resume)  # not a run directory: the error, whatever else it holds
        if (Path(a.resume) / "final").is_dir() and not (a.config or a.overrides):
            # finished: open() would trim its logs to the last checkpoint
            print(f"sft: {a.resume} has finished; its model is in {Path(a.resume) / 'final'}")
            return
        cfg, run_dir, ckpt = _resumed(a, SFTConfig)
    else:
        cfg = load_config(SFTConfig, *_config_args(a))
        resolve_device(cfg.device)  # a missing GPU stops here, before anything is written
        check_inputs([cfg.data], cfg.model, sft=True)
        check_lora(cfg.lora, cfg.model.init, cfg.model.size, where="lora")
        run_dir, ckpt = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg)), None
    set_threads(cfg.threads)
    with StepProgress("sft", cfg.steps, ["loss", "eval_pass@1"], start=_step_of(ckpt)) as bar:
        result = sft.run(cfg, run_dir, ckpt, progress=bar.update)
    run_dir.close()
    print(f"sft: held-out pass@1 {result['summary']['pass@1']:.3f}; model in {run_dir.path / 'final'}")


def _resumed(a, config_cls):
    """(config, run dir, its latest checkpoint) of `--resume RUN_DIR` for a command whose resumed run keeps its
    whole config (slide sft, slide pretrain)."""
    from slide.config import load_config
    from slide.rundir import RunDir
    if a.config or a.overrides:
        raise UserError(f"slide {a.cmd} --resume RUN_DIR: a resumed run keeps its config (no CONFIG or overrides)")
    cfg = load_config(config_cls, str(RunDir.config_of(a.resume)))
    resolve_device(cfg.device)  # a missing GPU stops here, before open() trims the logs past the last checkpoint
    return (cfg, *RunDir.open(a.resume))


def _step_of(ckpt: Path | None) -> int:
    return int(ckpt.name.split("_")[-1]) if ckpt else 0


def cmd_rl(a) -> None:
    from slide.config import RLConfig, dump_config, load_config
    from slide.model.lora import check_lora
    from slide.progress import StepProgress
    from slide.rundir import RunDir
    if a.resume:
        overrides = [x for x in (a.config, *a.overrides) if x]
        moved = [x for x in overrides if not x.split("=", 1)[0].startswith(RESUME_KEYS)]
        if moved:
            keys = ", ".join(k.rstrip(".") for k in RESUME_KEYS)
            raise UserError(f"slide rl --resume RUN_DIR {moved[0]}: a resumed run keeps its config; only where it runs "
                            f"and how long a step may stall may change ({keys})")
        cfg = load_config(RLConfig, str(RunDir.config_of(a.resume)), overrides)
        resolve_device(cfg.device)  # before open() trims the logs past the last checkpoint
        run_dir, ckpt = RunDir.open(a.resume)
        if overrides:  # a later --resume continues where this one runs
            (run_dir.path / "config.yaml").write_text(dump_config(cfg))
    else:
        cfg = load_config(RLConfig, *_config_args(a))
        resolve_device(cfg.device)
        check_inputs([cfg.data.train, cfg.data.eval], cfg.model, cfg.data.reward)
        check_lora(cfg.train.lora, cfg.model.init, cfg.model.size)
        run_dir, ckpt = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg)), None
    set_threads(cfg.threads)
    with StepProgress("rl", cfg.steps, ["reward_mean", "eval_pass@1"], start=_step_of(ckpt)) as bar:
        if cfg.mode == "async":
            from slide.rl import async_rl as driver  # imports Ray
        else:
            from slide.rl import sync as driver
        result = driver.run(cfg, run_dir, ckpt, progress=bar.update)
    run_dir.close()
    if result:
        print(f"rl: held-out pass@1 {result['summary']['pass@1']:.3f}; run in {run_dir.path}")
    else:
        print(f"rl: {run_dir.path} had already reached steps={cfg.steps}; nothing to do")


def cmd_pretrain(a) -> None:
    from slide.config import dump_config, load_config
    from slide.pretrain.config import PretrainConfig
    from slide.pretrain import runner
    from slide.progress import StepProgress
    from slide.rundir import RunDir
    if a.resume:
        cfg, run_dir, ckpt = _resumed(a, PretrainConfig)
    else:
        cfg = load_config(PretrainConfig, *_config_args(a))
        resolve_device(cfg.device)
        runner.mixtures(cfg, runner.tokenizer_for(cfg.model.init))  # bad data files stop here, before the run exists
        run_dir, ckpt = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg)), None
    set_threads(cfg.threads)
    total = sum(len(s) for s in runner.plan(cfg.stages, cfg.schedule))
    with StepProgress("pretrain", total, ["loss", "lr"], start=_step_of(ckpt)) as bar:
        result = runner.run(cfg, run_dir, ckpt, progress=bar.update)
    run_dir.close()
    for name, s in result["stages"].items():
        loss = ", ".join(f"{k} {v:.3f}" for k, v in s["held_out_loss"].items())
        needle = ", ".join(f"{k}: {v:.2f}" for k, v in s["needle_accuracy"].items())
        print(f"pretrain {name}: held-out loss {loss}" + (f"; needle accuracy {needle}" if needle else ""))
    print(f"pretrain: model in {result['final']}; summary in {run_dir.path / 'summary.json'}")
    if a.chain or a.chain_quick:
        from slide.pretrain.chain import run_chain
        print(f"chain report: {run_chain(result, run_dir.path, a.chain_quick, cfg.device)}")


RESUME_KEYS = ("train.world_size", "train.rank_threads", "train.offload", "rollout.engines", "rollout.engine_threads",
               "cluster.", "threads", "watchdog_s")  # where it runs, how long a step may stall: never what it computes


def cmd_eval(a) -> None:
    from slide.engine.inprocess import InProcessEngine
    from slide.eval.passk import evaluate, verifiers
    from slide.eval.table import print_eval
    from slide.model.load import load_with_tokenizer
    from slide.rl.data import eval_problems
    from slide.tasks import parse_task_specs
    if min(a.k) < 1 or (a.n is not None and a.n < max(a.k)):
        raise UserError(f"--k {' '.join(map(str, a.k))} --n {a.n}: every k must be >= 1 and n (samples per problem, "
                        f"default the largest k) at least the largest k")
    device = resolve_device(a.device)
    model, tok = load_with_tokenizer(a.model, "--model", DTYPES[precision_for(a.dtype, device)], device)
    data = ",".join(a.data)  # a suite: several --data specs (or one comma-joined spec), each file its own family
    specs = parse_task_specs(data)
    problems = eval_problems(specs, a.prompts, a.seed)
    result = evaluate(InProcessEngine(model, tok.pad_token_id), tok, problems, verifiers(specs), k=max(a.k),
                      n=a.n, ks=tuple(a.k), temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                      chance=a.chance)
    print_eval(result)
    if a.chance and "chance_pass@1" not in result["summary"]:
        print("chance: not scored (it needs single-turn prompts, at least two of one family and level)")
    out = Path(a.out or Path(a.model) / "eval.json")
    out.write_text(json.dumps({"model": a.model, "data": data, **result}, indent=2))
    print(f"written: {out}")


def cmd_ready(a) -> None:
    from slide.rl.readiness import ready_command
    report = ready_command(a.checkpoint, a.data, a.n, a.temperature, a.prompts, a.grid, a.max_new_tokens, a.seed,
                           a.device, a.dtype)
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.checkpoint, "data": a.data, **report}, indent=2))
        print(f"written: {a.out}")


def cmd_demo(a) -> None:
    from slide.demo import run_demo
    resolve_device(a.device)
    run_demo(a.out, quick=a.quick, device=a.device)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`slide bench`'s flags (also `python -m slide.bench`)."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--gens", type=int, default=8)
    parser.add_argument("--len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="training autocast and rollout precision (bf16: engine weights and compute in bf16; "
                             "auto: bf16 on a GPU, fp32 on the CPU)")
    add_device_arguments(parser, dtype=False)
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile the training forward")
    parser.add_argument("--grad-ckpt", action="store_true",
                        help="train.gradient_checkpointing: recompute activations in backward (less memory)")
    parser.add_argument("--engine", choices=ENGINES, default="inprocess",
                        help="rollout engine: inprocess (default) or vllm (needs .venv-vllm: scripts/setup_vllm.sh)")


def cmd_bench(a) -> None:
    from slide.bench import run_bench
    run_bench(a)


def cmd_ablate(a) -> None:
    from slide.ablate.runner import run_ablation
    resolve_device(a.device)
    run_ablation(a.name, a.out, tuple(a.seeds), quick=a.quick, parallel=a.parallel, device=a.device)


def cmd_arena(a) -> None:
    from slide.eval.arena import print_tables, run
    from slide.config import AgentSpec
    limits = {"max_turns": a.max_turns, "max_tokens": a.max_episode_tokens}
    for flag, value in (("--max-turns", a.max_turns), ("--max-episode-tokens", a.max_episode_tokens),
                        ("--max-new-tokens", a.max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"arena {flag} {value}: must be >= 1")
    device = resolve_device(a.device)
    agent = AgentSpec(**{k: v for k, v in limits.items() if v is not None})
    result = run(a.players, a.data, a.prompts, a.seed, a.judge, a.max_new_tokens, Path(a.out), device,
                 DTYPES[precision_for(a.dtype, device)], a.bootstrap, agent)
    print_tables(result)
    extra = f", {Path(a.out) / 'trajectories.jsonl'}" if result.get("agentic") else ""
    print(f"written: {Path(a.out) / 'arena.json'}, {Path(a.out) / 'arena.png'}{extra}")


def cmd_view(a) -> None:
    from slide.serve.view import view
    view(a.runs_dir, a.host, a.port)


def cmd_serve(a) -> None:
    from slide.serve.server import serve
    device = resolve_device(a.device)
    serve(a.checkpoint, a.host, a.port, device, DTYPES[precision_for(a.dtype, device)], a.name, a.max_model_len,
          a.log_level)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="slide", description="RL post-training for reasoning and agentic LLMs (GLM-4.5 recipe)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pt = sub.add_parser("pretrain", help="staged pre-training and mid-training")
    pt.add_argument("config", nargs="?")
    pt.add_argument("overrides", nargs="*")
    pt.add_argument("--resume", metavar="RUN_DIR")
    pt.add_argument("--chain", action="store_true", help="then SFT -> RL -> eval from its final model (slide demo's "
                                                         "settings); one report, RUN_DIR/chain.md")
    pt.add_argument("--chain-quick", action="store_true", help="--chain at the demo's smoke-test settings")
    pt.set_defaults(fn=cmd_pretrain)
    s = sub.add_parser("sft", help="cold-start SFT")
    s.add_argument("config", nargs="?")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--resume", metavar="RUN_DIR")
    s.set_defaults(fn=cmd_sft)
    r = sub.add_parser("rl", help="colocated synchronous RL")
    r.add_argument("config", nargs="?")
    r.add_argument("overrides", nargs="*")
    r.add_argument("--resume", metavar="RUN_DIR")
    r.set_defaults(fn=cmd_rl)
    e = sub.add_parser("eval", help="pass@k and avg@n per task family and level")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, nargs="+",
                   help="task specs, e.g. arithmetic:1-3,countdown:2 or a.jsonl b.jsonl (a suite)")
    e.add_argument("--k", type=int, nargs="+", default=[1], help="the j of pass@j to report (1 always)")
    e.add_argument("--n", type=int, help="samples per problem (default the largest k; 1 = greedy)")
    e.add_argument("--prompts", type=int, default=200)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=96)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="JSON output (default MODEL/eval.json)")
    e.add_argument("--chance", action="store_true",
                   help="also score every answer against another prompt's problem of its family and level: the pass "
                        "rate guesses reach (chance_pass@1; lucky when pass@1 is mostly that)")
    add_device_arguments(e)
    e.set_defaults(fn=cmd_eval)
    rd = sub.add_parser("ready", help="readiness for RL: sampled pass rates and the share of groups with a signal")
    rd.add_argument("checkpoint")
    rd.add_argument("--data", required=True, help="task spec or a .jsonl/.parquet of training prompts")
    rd.add_argument("--n", type=int, default=8, help="samples per prompt (rollout.n)")
    rd.add_argument("--temperature", type=float, default=1.0, help="the rollout temperature")
    rd.add_argument("--grid", type=float, nargs="*", default=[], help="more temperatures to compare")
    rd.add_argument("--prompts", type=int, default=32)
    rd.add_argument("--max-new-tokens", type=int, default=96)
    rd.add_argument("--seed", type=int, default=0)
    rd.add_argument("--out", help="write the report as JSON here")
    add_device_arguments(rd)
    rd.set_defaults(fn=cmd_ready)
    d = sub.add_parser("demo", help="SFT -> RL -> eval on the demo-size tiny GLM (CPU)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="test-size model, a few steps (smoke test)")
    add_device_arguments(d, dtype=False)
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="fixed-shape RL step benchmark on a local HF causal LM")
    add_bench_arguments(b)
    b.set_defaults(fn=cmd_bench)
    ab = sub.add_parser("ablate", help="a GLM RL lesson: both arms x seeds, a plot and a table")
    ab.add_argument("name", help="token-mean | single-stage | curriculum | data-quality | temperature")
    ab.add_argument("--out", default="runs/ablate")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ab.add_argument("--parallel", type=int, default=2, help="runs at a time (one torch thread each)")
    ab.add_argument("--quick", action="store_true", help="toy size: a smoke test of the whole path")
    add_device_arguments(ab, dtype=False)
    ab.set_defaults(fn=cmd_ablate)
    ar = sub.add_parser("arena", help="models answer the same prompts; pairwise win/tie/loss, Bradley-Terry ratings")
    ar.add_argument("players", nargs="+", help="[NAME=]CHECKPOINT_FOLDER or [NAME=]URL#MODEL (two or more)")
    ar.add_argument("--data", required=True, help="task spec of the prompts, e.g. arithmetic:1-3 or data.jsonl")
    ar.add_argument("--prompts", type=int, default=100)
    ar.add_argument("--judge", help="URL#MODEL of a judge model (default: the task's verifier)")
    ar.add_argument("--max-new-tokens", type=int, default=96, help="tokens per answer (agent families: per turn)")
    ar.add_argument("--max-turns", type=int, help="agent families: assistant turns per episode (default "
                                                  "agent.max_turns, slide/config.py)")
    ar.add_argument("--max-episode-tokens", type=int, help="agent families: response tokens per episode, model and "
                                                           "tools (default agent.max_tokens)")
    ar.add_argument("--seed", type=int, default=0)
    ar.add_argument("--bootstrap", type=int, default=200, help="bootstrap rounds of the rating intervals")
    ar.add_argument("--out", default="runs/arena")
    add_device_arguments(ar)
    ar.set_defaults(fn=cmd_arena)
    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP API (chat, completions, tools, reasoning)")
    sv.add_argument("checkpoint", help="a local Hugging Face causal LM folder (e.g. RUN/checkpoints/step_N/model)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000, help="0: a free port (printed)")
    sv.add_argument("--name", help="the model name clients send (default: the checkpoint path as given)")
    sv.add_argument("--max-model-len", type=int, help="context length (default: the model's max positions)")
    sv.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_device_arguments(sv)
    sv.set_defaults(fn=cmd_serve)
    vw = sub.add_parser("view", help="a local web page: runs side by side, a trajectory browser")
    vw.add_argument("runs_dir", help="a run folder, or a folder of runs (e.g. runs)")
    vw.add_argument("--host", default="127.0.0.1")
    vw.add_argument("--port", type=int, default=8080, help="0: a free port (printed)")
    vw.set_defaults(fn=cmd_view)
    from slide.datatools.cli import add_parser as add_data_parser
    add_data_parser(sub)
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse ends `nargs="*"` at the first flag, so `slide pretrain CONFIG --chain key=value` would leave
    `key=value` unparsed: overrides after a flag join the command's overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = _parse(argv)
        _quiet()
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resumable = args is not None and args.cmd in ("pretrain", "sft", "rl")
        print("interrupted" + (f"; the last checkpoint is intact (slide {args.cmd} --resume RUN_DIR)" if resumable
                               else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
