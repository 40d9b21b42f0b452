#!/usr/bin/python3
"""Exports a trainer state file as a Hugging Face-layout checkpoint that dmoe loads unchanged:
config.json (MODEL-SPEC.md §1.1 fields; `llada2_moe` or `bailing_moe_v2`), model.safetensors
with exactly the tensor names of §2 (per-expert tensors; router weight and expert bias F32,
everything else BF16 by default) and the tokenizer files.

  export.py --state sft.pt --kind diffusion --tokenizer TOKDIR --out models/tiny-diffusion

Also usable as a library: `load_checkpoint(dir)` reads such a directory back into a PyTorch
`Model` (the verification uses it, so it checks exactly the bytes dmoe reads).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Model, ModelConfig, MoE  # noqa: E402

_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_NP = {"F32": np.float32, "F16": np.float16}


def hf_tensors(model):
    """(name, tensor) in model order, names exactly as MODEL-SPEC.md §2."""
    c = model.c
    out = [("model.word_embeddings.weight", model.word_embeddings.weight)]
    for l, layer in enumerate(model.layers):
        p = f"model.layers.{l}"
        a = layer.attention
        out += [(f"{p}.input_layernorm.weight", layer.input_layernorm.weight),
                (f"{p}.attention.query_key_value.weight", a.query_key_value.weight),
                (f"{p}.attention.query_layernorm.weight", a.query_layernorm.weight),
                (f"{p}.attention.key_layernorm.weight", a.key_layernorm.weight),
                (f"{p}.attention.dense.weight", a.dense.weight),
                (f"{p}.post_attention_layernorm.weight", layer.post_attention_layernorm.weight)]
        mlp = layer.mlp
        if isinstance(mlp, MoE):
            out += [(f"{p}.mlp.gate.weight", mlp.gate.weight),
                    (f"{p}.mlp.gate.expert_bias", mlp.gate.expert_bias)]
            for e in range(c.num_experts):
                out += [(f"{p}.mlp.experts.{e}.gate_proj.weight", mlp.w_gate[e]),
                        (f"{p}.mlp.experts.{e}.up_proj.weight", mlp.w_up[e]),
                        (f"{p}.mlp.experts.{e}.down_proj.weight", mlp.w_down[e])]
            s = mlp.shared_experts
            out += [(f"{p}.mlp.shared_experts.gate_proj.weight", s.gate_proj.weight),
                    (f"{p}.mlp.shared_experts.up_proj.weight", s.up_proj.weight),
                    (f"{p}.mlp.shared_experts.down_proj.weight", s.down_proj.weight)]
        else:
            out += [(f"{p}.mlp.gate_proj.weight", mlp.gate_proj.weight),
                    (f"{p}.mlp.up_proj.weight", mlp.up_proj.weight),
                    (f"{p}.mlp.down_proj.weight", mlp.down_proj.weight)]
    out += [("model.norm.weight", model.norm.weight), ("lm_head.weight", model.lm_head.weight)]
    return out


def is_router(name):
    return name.endswith("mlp.gate.weight") or name.endswith("mlp.gate.expert_bias")


def write_safetensors(path, tensors):
    """tensors: list of (name, torch tensor in its final dtype)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        t = t.detach().contiguous()
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy().tobytes()
        else:
            data = t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=_NP[info["dtype"]]).copy())
        out[name] = t.reshape(info["shape"]).float()
    return out


def export(state_path, kind, tokenizer_dir, out_dir, dtype="bf16", block_length=32):
    state = torch.load(state_path)
    cfg = ModelConfig(**state["config"])
    model = Model(cfg)
    model.load_state_dict(state["model"])
    tdtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    tensors = [(n, t.detach().float() if is_router(n) else t.detach().to(tdtype))
               for n, t in hf_tensors(model)]
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
    with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
        added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
    hf = cfg.hf_config(kind, pad_token_id=added["<|endoftext|>"],
                       eos_token_id=added["<|endoftext|>"], block_length=block_length)
    hf["torch_dtype"] = {"bf16": "bfloat16", "f32": "float32"}[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    return sum(t.numel() for _, t in tensors)


def load_checkpoint(directory):
    """An exported directory -> (PyTorch Model in F32 with the stored weights, config.json)."""
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    fields = {k: hf[k] for k in ModelConfig.__dataclass_fields__ if k in hf}
    cfg = ModelConfig(**fields)
    model = Model(cfg)
    weights = read_safetensors(os.path.join(directory, "model.safetensors"))
    with torch.no_grad():
        for name, t in hf_tensors(model):
            t.copy_(weights.pop(name))
    if weights:
        raise ValueError(f"unexpected tensors: {sorted(weights)[:5]}")
    model.eval()
    return model, hf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state", required=True)
    ap.add_argument("--kind", choices=["ar", "diffusion"], required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--block-length", type=int, default=32)
    args = ap.parse_args()
    n = export(args.state, args.kind, args.tokenizer, args.out, args.dtype, args.block_length)
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"exported {args.kind} checkpoint to {args.out}: {n} parameters, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
