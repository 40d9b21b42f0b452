#!/usr/bin/python3
"""Turns an exported checkpoint directory back into a trainer state file, so a later phase can
continue from a committed model (`train.py t2t --init STATE` from models/tiny-diffusion) when
the original state file is gone. The inverse of export.py: safetensors names -> Model
parameters (export.load_checkpoint), F32 in memory.

  import_model.py --model models/tiny-diffusion --out WORK/tiny-diffusion.pt

Round trip check (always run): the state file is exported again into a scratch directory and
its model.safetensors must equal the original byte for byte and its config.json must hold the
same values; exit status 1 otherwise. Exact because BF16 -> F32 -> BF16 and F32 -> F32 are
lossless. The continued model starts from the stored (BF16-rounded) weights, not from the F32
weights the original run ended with.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import export, load_checkpoint  # noqa: E402


def import_model(model_dir, out_path):
    model, hf = load_checkpoint(model_dir)
    cfg = model.c
    kind = "diffusion" if hf["model_type"] == "llada2_moe" else "ar"
    torch.save({"config": cfg.__dict__, "model": model.state_dict(),
                "meta": {"phase": "import", "source": model_dir, "steps": 0, "seed": 0,
                         "seconds": 0.0, "cpu_seconds": 0.0, "tokens": 0,
                         "kind": kind, "dtype": hf.get("torch_dtype", "bfloat16"),
                         "block_length": hf.get("block_length", 32)}}, out_path)
    return kind, hf


def round_trip(model_dir, state_path, kind, hf):
    """Exports `state_path` again and compares with `model_dir`. Returns a list of differences."""
    dtype = {"bfloat16": "bf16", "float32": "f32"}[hf.get("torch_dtype", "bfloat16")]
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        export(state_path, kind, model_dir, tmp, dtype, hf.get("block_length", 32))
        with open(os.path.join(model_dir, "model.safetensors"), "rb") as a, \
                open(os.path.join(tmp, "model.safetensors"), "rb") as b:
            if a.read() != b.read():
                diffs.append("model.safetensors bytes differ")
        with open(os.path.join(tmp, "config.json")) as f:
            again = json.load(f)
        for k in sorted(set(hf) | set(again)):
            if hf.get(k) != again.get(k):
                diffs.append(f"config.json {k}: {hf.get(k)!r} -> {again.get(k)!r}")
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="exported checkpoint directory")
    ap.add_argument("--out", required=True, help="state file to write")
    args = ap.parse_args()
    t0 = time.time()
    kind, hf = import_model(args.model, args.out)
    diffs = round_trip(args.model, args.out, kind, hf)
    n = sum(t.numel() for t in torch.load(args.out)["model"].values())
    if diffs:
        print(f"import_model: round trip of {args.model} FAILED:\n  " + "\n  ".join(diffs),
              file=sys.stderr)
        sys.exit(1)
    print(f"import_model: {args.model} -> {args.out} ({kind}, {n} values); re-export identical "
          f"(model.safetensors byte for byte, config.json) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
