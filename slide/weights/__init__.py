"""Weights on their way from the trainer to the rollout engines.

fp8.py        block-wise FP8 (e4m3, 128x128 blocks, float32 scale_inv) codec
buckets.py    bucketed, versioned sync (WeightSync.push) and the engine-side WeightReceiver
transport.py  the same buckets over a torch.distributed channel of their own (gloo / NCCL), point to point
export.py     a SLIDE checkpoint -> an FP8 Hugging Face checkpoint that vLLM / SGLang serve
"""
