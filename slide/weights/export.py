"""Export a SLIDE checkpoint as a block-wise FP8 Hugging Face checkpoint (the layout of GLM-4.5-FP8).

    python -m slide.weights.export runs/rl/final runs/rl/final-fp8

Linear weights (fp8.is_quantizable) become float8_e4m3fn `<name>` + float32 `<name>_scale_inv`
[ceil(out/128), ceil(in/128)]; everything else is written in bfloat16, except the router's
`e_score_correction_bias`, which stays float32. config.json gains

    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128], "modules_to_not_convert": [...]}

which transformers (FineGrainedFP8Config), vLLM and SGLang (Fp8Config) read. "modules_to_not_convert"
(and its older vLLM spelling "ignored_layers") names the modules whose 2-D weights stay bf16:
embeddings, routers, lm_head. Each of those names is a whole module path that is no prefix of a quantized
module's name, so loaders that match by substring skip exactly these. Every other file of the folder
(tokenizer, chat template, generation config) is copied unchanged.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from slide.errors import UserError
from slide.weights.buckets import KEEP_FP32
from slide.weights.fp8 import BLOCK, is_quantizable, quantize_blockwise

INDEX = "model.safetensors.index.json"


def _shards(folder: Path) -> list[str]:
    if (folder / INDEX).is_file():
        return sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise UserError(f"export_fp8: {str(folder)!r} has no model.safetensors or {INDEX}")


def _convert(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if is_quantizable(name, tensor):
        try:
            q, scale_inv = quantize_blockwise(tensor, BLOCK)
        except ValueError as e:
            raise UserError(f"export_fp8: tensor {name}: {e}") from None
        return {name: q, f"{name}_scale_inv": scale_inv}
    if tensor.is_floating_point() and not name.endswith(KEEP_FP32):
        return {name: tensor.to(torch.bfloat16)}
    return {name: tensor}


def export_fp8(model_dir_in: str | Path, model_dir_out: str | Path) -> dict:
    """Write the FP8 checkpoint of `model_dir_in` to `model_dir_out` (created; must not exist or be empty).

    Returns {"quantized": [...names], "kept": [...names], "bytes_in": int, "bytes_out": int}.
    """
    src, dst = Path(model_dir_in), Path(model_dir_out)
    if not (src / "config.json").is_file():
        raise UserError(f"export_fp8: {str(src)!r} is not a Hugging Face checkpoint (no config.json)")
    config = json.loads((src / "config.json").read_text())
    if "quantization_config" in config:
        raise UserError(f"export_fp8: {str(src)!r} is already quantized ({config['quantization_config'].get('quant_method')})")
    if dst.exists() and any(dst.iterdir()):
        raise UserError(f"export_fp8: output folder {str(dst)!r} is not empty; give a new folder")
    shards = _shards(src)
    dst.mkdir(parents=True, exist_ok=True)

    quantized, kept, weight_map = [], [], {}
    not_converted = set()  # whole module paths of the 2-D weights that stay bf16 (embed_tokens, mlp.gate, lm_head)
    bytes_in = bytes_out = 0
    for shard in shards:
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(src / shard), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                bytes_in += tensor.numel() * tensor.element_size()
                converted = _convert(name, tensor)
                (quantized if len(converted) == 2 else kept).append(name)
                if len(converted) == 1 and name.endswith(".weight") and tensor.dim() == 2:
                    not_converted.add(name.removesuffix(".weight"))
                out.update(converted)
        save_file(out, str(dst / shard), metadata={"format": "pt"})
        bytes_out += sum(t.numel() * t.element_size() for t in out.values())
        weight_map.update({name: shard for name in out})
    if (src / INDEX).is_file():
        index = {"metadata": {"total_size": bytes_out}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX).write_text(json.dumps(index, indent=2) + "\n")

    not_converted = sorted(not_converted)
    config["quantization_config"] = {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": not_converted,
        "ignored_layers": not_converted,  # vLLM releases before modules_to_not_convert support
    }
    config["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in src.iterdir():
        if path.is_file() and path.name not in {"config.json", INDEX, *shards}:
            shutil.copy2(path, dst / path.name)
    return {"quantized": quantized, "kept": kept, "bytes_in": bytes_in, "bytes_out": bytes_out}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m slide.weights.export MODEL_DIR OUT_DIR", file=sys.stderr)
        return 2
    try:
        stats = export_fp8(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(stats['quantized'])} tensors to fp8, {len(stats['kept'])} kept; "
          f"{stats['bytes_in'] / 2**20:.1f} MiB -> {stats['bytes_out'] / 2**20:.1f} MiB in {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
