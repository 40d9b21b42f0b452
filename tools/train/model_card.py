#!/usr/bin/python3
"""Writes README.md, the model card (and copies the held-out task file) into an exported model directory.

  model_card.py --model models/tiny-diffusion --kind diffusion --work WORK --command "..."
  model_card.py --model models/tiny-diffusion-t2t --kind t2t --work WORK --command "..." \
                --editing docs/training/editing.json
"""
import argparse
import json
import os
import shutil

import torch


def fmt_minutes(s):
    return f"{s / 60:.1f} min"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", choices=["ar", "diffusion", "t2t"], required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--sweep", help="sweep .json from sweep.py")
    ap.add_argument("--verify", help="verify.json from verify.py")
    ap.add_argument("--editing", help="editing .json from editing.py (kind t2t)")
    args = ap.parse_args()

    with open(os.path.join(args.work, "data", "data_card.json")) as f:
        data = json.load(f)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    timings = {}
    tpath = os.path.join(args.work, "timings.json")
    if os.path.exists(tpath):
        with open(tpath) as f:
            timings = json.load(f)
    phases = {"ar": ["ar"], "diffusion": ["ar", "convert", "sft"], "t2t": ["t2t"]}[args.kind]
    metas = {}
    for p in phases:
        st = os.path.join(args.work, f"{p}.pt")
        if os.path.exists(st):
            metas[p] = torch.load(st)["meta"]
    shutil.copy(os.path.join(args.work, "data", "tasks_eval.jsonl"),
                os.path.join(args.model, "eval_tasks.jsonl"))

    arch = cfg["architectures"][0]
    name = os.path.basename(os.path.normpath(args.model))
    lines = [f"# {name}", ""]
    if args.kind == "ar":
        lines += ["The autoregressive parent of the tiny LLaDA2.0 recipe: a "
                  f"`{cfg['model_type']}` (`{arch}`, Ling 2.0 architecture) model trained "
                  "next-token. Decode it with `--mode ar` (the default for this checkpoint).", ""]
    elif args.kind == "t2t":
        lines += ["A tiny LLaDA2.1-style block-diffusion MoE language model (`llada2_moe`, "
                  "`LLaDA2MoeModelLM`; same architecture and tokenizer as `models/tiny-diffusion`): "
                  "`models/tiny-diffusion` trained further with the LLaDA2.1 objective, mask "
                  "filling (M2T) plus token-to-token editing (T2T): besides the masked answer "
                  "tokens, a random share of the visible answer tokens is replaced by random "
                  "vocabulary tokens and every visible answer token is trained to predict the "
                  "original one (rewrite the substitutes, keep the rest); the prompt is never "
                  "masked nor substituted. Training starts from the committed BF16 weights of "
                  "`models/tiny-diffusion` (read back by `tools/train/import_model.py`, exact "
                  "round trip). Decode it with or without token editing (`--editing "
                  "off|speed|quality`); the table below says what editing does here. Block "
                  "length 32; no logit shift.", ""]
    else:
        lines += ["A tiny block-diffusion MoE language model (`llada2_moe`, `LLaDA2MoeModelLM`) "
                  "made with the LLaDA2.0 recipe at laptop scale: the autoregressive parent "
                  "`models/tiny-ar` converted by continued training with the block-diffusion "
                  "objective under a Warmup-Stable-Decay block-size schedule, then block-diffusion "
                  "SFT. Block length 32; no logit shift (logits at i predict token i).", ""]
    lines += [
        "## Architecture", "",
        f"- {cfg['num_hidden_layers']} layers (layer 0 dense SwiGLU of width "
        f"{cfg['intermediate_size']}, then MoE), hidden {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']} query / {cfg['num_key_value_heads']} KV heads of "
        f"{cfg['head_dim']}, QK-norm, partial NeoX RoPE ({cfg['rotary_dim']} of "
        f"{cfg['head_dim']} dims, theta {cfg['rope_theta']:g})",
        f"- MoE: {cfg['num_experts']} routed experts of width {cfg['moe_intermediate_size']} "
        f"(sigmoid router, expert bias, {cfg['n_group']} groups / top-{cfg['topk_group']} "
        f"groups, top-{cfg['num_experts_per_tok']}, routed scaling "
        f"{cfg['routed_scaling_factor']}) + {cfg['num_shared_experts']} shared expert; untied "
        "lm_head",
        f"- vocab {cfg['vocab_size']} (byte-level BPE trained on the corpus, 2500 merges, "
        "Ling 2.0 special tokens and chat template); weights BF16, router F32",
        "",
        "## How it was made", "",
        "Exact command (from the repository root):", "", "```sh", args.command, "```", "",
        f"Seed {args.seed}. Trainer: Python on Debian's PyTorch (`python3-torch`), CPU only; "
        "see `docs/training.md` for the recipe and `tools/train/` for the code.", "",
    ]
    for p in phases:
        if p in metas:
            m = metas[p]
            lines.append(f"- phase `{p}`: {m['steps']} steps, {m['tokens'] / 1e6:.2f} M loss "
                         f"tokens, {fmt_minutes(m['seconds'])} wall, "
                         f"{fmt_minutes(m['cpu_seconds'])} CPU")
    if timings:
        lines.append(f"- whole recipe: {fmt_minutes(timings.get('total_seconds', 0))} wall "
                     f"({timings.get('machine', '')})")
    lines += [
        "", "## Data", "",
        f"- Text corpus: {data['corpus_train_docs']} fortunes ({data['corpus_train_chars'] / 1e6:.2f} M "
        f"characters) from Debian's `fortunes` / `fortunes-min` packages "
        "(/usr/share/games/fortunes, a benign subset of the files; overstrikes removed, "
        f"20-400 characters each); {data['corpus_eval_docs']} held out.",
        "- Synthetic chat tasks with exactly checkable answers (generated by "
        "`tools/train/make_data.py`, seed as above): "
        + ", ".join(f"{k} {v}" for k, v in data["tasks_train"].items())
        + " training samples ('fortune' = a fortune as the answer to a request for one; not "
        "scored).",
        "- Held-out evaluation set: `eval_tasks.jsonl` in this directory ("
        + ", ".join(f"{k} {v}" for k, v in data["tasks_eval"].items())
        + "); no evaluation instance (operands, list, words, fields) occurs in the training data, whatever the wording.", "",
        "Tasks: `add` (a + b, two-digit operands), `sort` (3-5 numbers below 100), `reverse` "
        "(3-5 distinct words, one per line, in reverse order), `copy` (repeat 3-6 distinct words, one "
        "per line), `template` (fill "
        "\"NAME is a AGE year old JOB from CITY.\").", "",
    ]
    if args.sweep and os.path.exists(args.sweep):
        with open(args.sweep) as f:
            sw = json.load(f)
        lines += ["## Evaluation (`dmoe eval`, exact match, batch 1)", ""]
        tasks = sorted(sw["ar"]["tasks"])
        lines.append("| decoding | " + " | ".join(tasks) + " | avg | TPF | tokens/s |")
        lines.append("|---" * (len(tasks) + 4) + "|")

        def row(label, r):
            return ("| " + label + " | " + " | ".join(f"{100 * r['tasks'][t]['accuracy']:.0f}"
                                                    for t in tasks)
                    + f" | {100 * r['mean_task_accuracy']:.1f} | {r['tokens_per_forward']:.2f} | "
                    f"{r['tokens_per_second']:.0f} |")
        lines.append(row("AR parent (tiny-ar)", sw["ar"]))
        if args.kind == "diffusion":
            for t, r in sw["diffusion"].items():
                lines.append(row(f"diffusion, threshold {t}", r))
        lines += ["", "The full sweep and plot: `docs/training/sweep.md`, `docs/training/sweep.png`.", ""]
    if args.editing and os.path.exists(args.editing):
        with open(args.editing) as f:
            ed = json.load(f)
        rows = ed["rows"]
        tasks = sorted(rows[0]["result"]["tasks"])
        lines += ["## Evaluation (`dmoe eval`, exact match, batch 1)", "",
                  "| model | editing | " + " | ".join(tasks) + " | avg | TPF | edits | tokens/s |",
                  "|---" * (len(tasks) + 6) + "|"]
        for r in rows:
            e = r["result"]
            lines.append(f"| {r['model_name']} | {r['mode']} | "
                         + " | ".join(f"{100 * e['tasks'][t]['accuracy']:.0f}" for t in tasks)
                         + f" | {100 * e['mean_task_accuracy']:.1f} | "
                         f"{e['tokens_per_forward']:.2f} | {e.get('edits', 0)} | "
                         f"{e['tokens_per_second']:.0f} |")
        lines += ["", f"Presets: {'; '.join(f'{k}: {v}' for k, v in ed['presets'].items())}; "
                  f"{ed['threads']} thread(s), {ed['machine']}. `tiny-diffusion-sft-control` (not "
                  "committed) is the control: the same steps of plain SFT from the same start. "
                  "Commands: `docs/training/editing.md`; discussion: `docs/training.md`, "
                  "\"Token editing\".", ""]
    if args.verify and os.path.exists(args.verify):
        with open(args.verify) as f:
            v = json.load(f)["summary"]
        lines += ["## Verification", "",
                  f"`tools/train/verify.py`: dmoe reproduces the PyTorch model: greedy AR "
                  f"{v['ar_match']}/{v['ar_total']} generations identical; reference "
                  f"`generate()` (MODEL-SPEC.md §4.3) vs dmoe diffusion decoding "
                  f"{v['diffusion_match']}/{v['diffusion_total']} identical ids and forward "
                  f"counts; tokenizer mismatches: {v['tokenizer_mismatches']}."
                  + (f" LLaDA2.1 token editing (PyTorch transcription of its `generate()` vs "
                     f"`dmoe generate --edit-threshold`): {v['editing_match']}/"
                     f"{v['editing_total']} identical ids, forward and edit counts."
                     if v.get("editing_total") else ""), ""]
    lines += ["## Use", "", "```sh",
              f"build/bin/dmoe generate --model {args.model} --chat \"Sort these numbers: 42 7 19 3\""
              + {"ar": "", "diffusion": " --visual", "t2t": " --editing quality --visual"}[args.kind],
              f"build/bin/dmoe generate --model {args.model} --prompt \"The quick brown fox\"",
              f"build/bin/dmoe eval --model {args.model} --tasks {args.model}/eval_tasks.jsonl"
              + (" --editing speed" if args.kind == "t2t" else ""),
              "```", "",
              "A toy: about 2 M parameters trained for minutes on two CPU cores. It writes "
              "fortune-like (often garbled) English and solves only part of the synthetic tasks "
              "(exact-match rates in the table above); it knows nothing else.",
              ""]
    with open(os.path.join(args.model, "README.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
