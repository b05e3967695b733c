"""Bytes and seconds per weight sync (trainer -> in-process engine) at fp32, bf16 and fp8.

    python benchmarks/sync_bytes.py                 # sizes test and demo, 256 MiB buckets
    python benchmarks/sync_bytes.py --bucket-mb 4 --repeats 5 --threads 1

Bytes are payload bytes (what a transport moves; fp8 counts q and scale_inv). Seconds are the median of
`repeats` pushes: encode (cast or quantize) + apply into the engine, on this machine's CPU.
"""
from __future__ import annotations

import argparse
import copy
import statistics

from slide.engine import set_threads
from slide.engine.inprocess import InProcessEngine
from slide.model.tiny import build_model, tiny_config
from slide.model.tokenizer import load_tokenizer
from slide.weights.buckets import PRECISIONS, WeightSync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["test", "demo"])
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    set_threads(args.threads)  # no call when torch already uses that many (slide.engine)
    tok = load_tokenizer()
    print(f"{'size':<6} {'params':>7} {'precision':<9} {'MiB':>8} {'buckets':>7} {'seconds':>8}")
    for size in args.sizes:
        trainer = build_model(tiny_config(size, tok), seed=0)
        engine = InProcessEngine(copy.deepcopy(trainer))
        params = sum(t.numel() for t in trainer.state_dict().values())
        moved = {}
        for precision in PRECISIONS:
            sync = WeightSync(precision, args.bucket_mb)
            runs = [sync.push(trainer, engine, version=engine.version + 1) for _ in range(args.repeats)]
            moved[precision] = runs[0]["sync/bytes"]
            seconds = statistics.median(r["sync/seconds"] for r in runs)
            print(f"{size:<6} {params / 1e6:>6.1f}M {precision:<9} {moved[precision] / 2**20:>8.2f} "
                  f"{runs[0]['sync/buckets']:>7} {seconds:>8.3f}")
        print(f"{size:<6} fp8/bf16 bytes = {moved['fp8'] / moved['bf16']:.3f}   "
              f"bf16/fp32 = {moved['bf16'] / moved['fp32']:.3f}")


if __name__ == "__main__":
    main()
