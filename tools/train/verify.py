#!/usr/bin/python3
"""Checks that dmoe's C++ engine reproduces the PyTorch model the trainer trained.

  verify.py --dmoe build/bin/dmoe --ar models/tiny-ar --diffusion models/tiny-diffusion \
            --tasks DATA/tasks_eval.jsonl --out verify.json

1. Tokenizer: tools/train/bpe.py ids == `dmoe tokenize` ids on sample texts.
2. AR parent: PyTorch greedy decoding (causal attention, logits[i] predict token i+1) ==
   `dmoe generate --mode ar --json` ids, on chat and raw-text prompts.
3. Diffusion model: a literal PyTorch transcription of the reference generate() of
   MODEL-SPEC.md §4.3 (full recompute of x[0:end] every step under the block-causal mask,
   threshold commits with the low-confidence fallback, stop after the block holding a stop
   token) == `dmoe generate --json` ids and forward counts, at several thresholds.
4. With --editing (threshold/edit-threshold pairs): a literal PyTorch transcription of
   LLaDA2.1's generate() loop (M2T + T2T token editing, docs/engine.md "Token editing";
   engine/reference_generate_editing.cc is the C++ one) == `dmoe generate --threshold T
   --edit-threshold E --json` ids, forward counts and edit counts.
The PyTorch side loads the exported safetensors (the same bytes dmoe reads) and runs in F32.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Tokenizer, render_chat  # noqa: E402
from export import load_checkpoint  # noqa: E402
from model import additive_mask  # noqa: E402


def dmoe_json(dmoe, *args):
    r = subprocess.run([dmoe, *args, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


@torch.no_grad()
def logits_for(model, ids, allowed):
    x = torch.tensor([ids])
    pos = torch.arange(len(ids))[None]
    return model(x, pos, additive_mask(allowed[None]))[0]


@torch.no_grad()
def torch_ar_greedy(model, prompt, max_new, stop_ids):
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        T = len(ids)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        nxt = int(logits_for(model, ids, causal)[-1].argmax())
        ids.append(nxt)
        out.append(nxt)
        if nxt in stop_ids:
            break
    return out


@torch.no_grad()
def torch_reference_generate(model, prompt, gen_length, block, threshold, mask_id, stop_ids,
                             steps=32):
    """MODEL-SPEC.md §4.3 at temperature 0 (argmax, confidence = its softmax probability)."""
    steps = min(steps, gen_length)
    P = len(prompt)
    nb = math.ceil((P + gen_length) / block)
    N = nb * block
    x = torch.tensor(list(prompt) + [mask_id] * (N - P))
    pos = torch.arange(N)
    full_mask = (pos[None, :] // block) <= (pos[:, None] // block)
    sched = [block // steps + (1 if s < block % steps else 0) for s in range(steps)]
    forwards = 0
    for b in range(P // block, nb):
        end = (b + 1) * block
        for step in range(steps):
            blk = x[end - block:end]
            active = blk == mask_id
            if not bool(active.any()):
                break
            logits = logits_for(model, x[:end].tolist(), full_mask[:end, :end])[end - block:end]
            forwards += 1
            p = torch.softmax(logits.float(), -1)
            conf, x0 = p.max(-1)
            conf = torch.where(active, conf, torch.full_like(conf, -math.inf))
            hi = conf > threshold
            if int(hi.sum()) >= sched[step]:
                commit = hi
            else:
                k = min(sched[step], int(active.sum()))
                commit = torch.zeros_like(active)
                commit[conf.topk(k).indices] = True
            blk[commit] = x0[commit]
            x[end - block:end] = blk
        if any(int(t) in stop_ids for t in x[P:end]):
            break
    out = x[P:P + gen_length].tolist()
    for i, t in enumerate(out):
        if t in stop_ids:
            return out[:i + 1], forwards
    return out, forwards


@torch.no_grad()
def torch_reference_generate_editing(model, prompt, gen_length, block, threshold, edit_threshold,
                                     max_post_steps, mask_id, stop_ids):
    """LLaDA2.1's generate() at temperature 0: per forward, M2T commits every masked position
    with confidence > threshold (else the single most confident one) and T2T rewrites every
    decoded non-prompt position of the block whose argmax differs with confidence >
    edit_threshold; once the block has no masks, up to max_post_steps edit-only forwards until
    one edits nothing. Returns (ids, forwards, edits)."""
    P = len(prompt)
    nb = math.ceil((P + gen_length) / block)
    N = nb * block
    x = torch.tensor(list(prompt) + [mask_id] * (N - P))
    pos = torch.arange(N)
    full_mask = (pos[None, :] // block) <= (pos[:, None] // block)
    forwards = edits = 0
    for b in range(P // block, nb):
        start, end = b * block, (b + 1) * block
        post_steps = 0
        prompt_in_block = pos[start:end] < P
        while True:
            old = x[start:end].clone()
            active = old == mask_id
            if not bool(active.any()):
                post_steps += 1
            if post_steps > max_post_steps:
                break
            logits = logits_for(model, x[:end].tolist(), full_mask[:end, :end])[start:end]
            forwards += 1
            conf, x0 = torch.softmax(logits.float(), -1).max(-1)
            m2t = torch.zeros_like(active)
            if bool(active.any()):
                mconf = torch.where(active, conf, torch.full_like(conf, -math.inf))
                hi = (mconf > threshold) & active
                if bool(hi.any()):
                    m2t = hi
                else:
                    m2t[int(mconf.argmax())] = True  # ties: the lower position, as topk
            t2t = ~active & ~prompt_in_block & (conf > edit_threshold) & (x0 != old)
            edits += int(t2t.sum())
            upd = m2t | t2t
            x[start:end] = torch.where(upd, x0, old)
            if not bool(active.any()) and not bool(t2t.any()):
                break
        tail = x[P:end].tolist()
        if mask_id not in tail and any(t in stop_ids for t in tail):
            break
    out = x[P:P + gen_length].tolist()
    for i, t in enumerate(out):
        if t in stop_ids:
            return out[:i + 1], forwards, edits
    return out, forwards, edits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dmoe", required=True)
    ap.add_argument("--ar", required=True)
    ap.add_argument("--diffusion", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--corpus", help="corpus_eval.jsonl for tokenizer texts")
    ap.add_argument("--per-task", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--thresholds", default="0.5,0.9,0.95")
    ap.add_argument("--editing", default="",
                    help="token editing checks, 'T/E,...' pairs of threshold / edit threshold, "
                         "e.g. 0.5/0.0,0.7/0.5 (the speed and quality presets); none by default")
    ap.add_argument("--max-post-steps", type=int, default=16)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tok = Tokenizer(args.diffusion)
    stop_ids = {tok.token_id("<|endoftext|>"), tok.token_id("<|role_end|>")}
    mask_id = tok.token_id("<|mask|>")
    rows = [json.loads(l) for l in open(args.tasks)]
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    prompts = []
    for task in sorted(by_task):
        for r in by_task[task][:args.per_task]:
            prompts.append((task, render_chat(r["chat"])))
    prompts += [("text", "The quick brown fox"), ("text", "Once upon a time, in a land far away,")]
    report = {"tokenizer": {}, "ar": [], "diffusion": []}

    # 1. tokenizer
    texts = [p for _, p in prompts] + [r["answer"] for r in rows[:50]]
    if args.corpus:
        texts += [json.loads(l)["text"] for l in open(args.corpus)][:100]
    texts += ["Ünïcödé — ✓ 😀 tabs\tand\n\nnewlines", "don't I'LL we've"]
    bad = 0
    for t in texts:
        if tok.encode(t) != dmoe_json(args.dmoe, "tokenize", "--model", args.diffusion, "--text", t)["ids"]:
            bad += 1
    report["tokenizer"] = {"texts": len(texts), "mismatches": bad}
    print(f"tokenizer: {len(texts) - bad}/{len(texts)} texts encode identically", flush=True)

    # 2. AR parent
    ar_model, _ = load_checkpoint(args.ar)
    ok = 0
    for task, text in prompts:
        ids = tok.encode(text)
        ref = torch_ar_greedy(ar_model, ids, args.max_new_tokens, stop_ids)
        got = dmoe_json(args.dmoe, "generate", "--model", args.ar, "--mode", "ar",
                        "--prompt-ids", ",".join(map(str, ids)),
                        "--max-new-tokens", str(args.max_new_tokens))
        same = got["ids"] == ref
        ok += same
        report["ar"].append({"task": task, "match": same, "tokens": len(ref),
                             "text": tok.decode(ref)})
    print(f"AR parent: {ok}/{len(prompts)} greedy generations identical (PyTorch vs dmoe --mode ar)",
          flush=True)

    # 3. diffusion model
    dm, hf = load_checkpoint(args.diffusion)
    block = hf.get("block_length", 32)
    for thr in [float(t) for t in args.thresholds.split(",")]:
        ok = 0
        for task, text in prompts:
            ids = tok.encode(text)
            ref, ref_fw = torch_reference_generate(dm, ids, args.max_new_tokens, block, thr,
                                                   mask_id, stop_ids)
            got = dmoe_json(args.dmoe, "generate", "--model", args.diffusion,
                            "--prompt-ids", ",".join(map(str, ids)), "--threshold", str(thr),
                            "--max-new-tokens", str(args.max_new_tokens))
            same = got["ids"] == ref and got["forwards"] == ref_fw
            ok += same
            report["diffusion"].append({"threshold": thr, "task": task, "match": same,
                                        "ids_match": got["ids"] == ref,
                                        "forwards": [ref_fw, got["forwards"]],
                                        "tokens": len(ref), "text": tok.decode(ref)})
        print(f"diffusion @ {thr}: {ok}/{len(prompts)} identical ids and forward counts "
              "(PyTorch reference generate() vs dmoe)", flush=True)
    report["editing"] = []
    for pair in [p for p in args.editing.split(",") if p]:
        thr, ethr = (float(v) for v in pair.split("/"))
        ok = 0
        for task, text in prompts:
            ids = tok.encode(text)
            ref, ref_fw, ref_ed = torch_reference_generate_editing(
                dm, ids, args.max_new_tokens, block, thr, ethr, args.max_post_steps, mask_id,
                stop_ids)
            got = dmoe_json(args.dmoe, "generate", "--model", args.diffusion,
                            "--prompt-ids", ",".join(map(str, ids)), "--threshold", str(thr),
                            "--edit-threshold", str(ethr),
                            "--max-post-steps", str(args.max_post_steps),
                            "--max-new-tokens", str(args.max_new_tokens))
            same = (got["ids"] == ref and got["forwards"] == ref_fw and
                    got.get("edits", ref_ed) == ref_ed)
            ok += same
            report["editing"].append({"threshold": thr, "edit_threshold": ethr, "task": task,
                                      "match": same, "ids_match": got["ids"] == ref,
                                      "forwards": [ref_fw, got["forwards"]],
                                      "edits": [ref_ed, got.get("edits")],
                                      "tokens": len(ref), "text": tok.decode(ref)})
        print(f"editing @ {thr}/{ethr}: {ok}/{len(prompts)} identical ids, forward and edit "
              "counts (PyTorch LLaDA2.1 generate() vs dmoe)", flush=True)
    report["summary"] = {
        "ar_match": sum(r["match"] for r in report["ar"]), "ar_total": len(report["ar"]),
        "diffusion_match": sum(r["match"] for r in report["diffusion"]),
        "diffusion_total": len(report["diffusion"]),
        "editing_match": sum(r["match"] for r in report["editing"]),
        "editing_total": len(report["editing"]),
        "tokenizer_mismatches": bad}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    all_ok = (bad == 0 and report["summary"]["ar_match"] == report["summary"]["ar_total"] and
              report["summary"]["diffusion_match"] == report["summary"]["diffusion_total"] and
              report["summary"]["editing_match"] == report["summary"]["editing_total"])
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
