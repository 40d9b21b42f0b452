#!/usr/bin/python3
"""LLaDA2.1 token editing on the tiny models: `dmoe eval` on the held-out tasks with
`--editing off | speed | quality` for each model, plus, for each editing preset, the same M2T
threshold with editing off (so what editing does is told apart from what the lower threshold
does).

  editing.py --dmoe build/bin/dmoe --models models/tiny-diffusion,models/tiny-diffusion-t2t \
             --tasks models/tiny-diffusion/eval_tasks.jsonl --out docs/training/editing

Writes OUT.md (the table with the exact command of every row), OUT.json (every dmoe eval
result and the commands) and OUT.png (accuracy and TPF per model and mode). All rows are
measured in one run on the same machine, one request at a time (--batch 1).
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys

# (label, dmoe flags). The presets are dmoe's (engine/generation_params.h, from the LLaDA2.1
# model cards): off = LLaDA2.0 decoding at the default threshold 0.95; speed = threshold 0.5,
# edit threshold 0.0; quality = threshold 0.7, edit threshold 0.5; both 16 post steps.
MODES = [
    ("off", ["--editing", "off"]),
    ("speed", ["--editing", "speed"]),
    ("quality", ["--editing", "quality"]),
    ("off @ 0.5 (speed's threshold)", ["--editing", "off", "--threshold", "0.5"]),
    ("off @ 0.7 (quality's threshold)", ["--editing", "off", "--threshold", "0.7"]),
]
PRESETS = {"off": "threshold 0.95", "speed": "threshold 0.5, edit threshold 0.0",
           "quality": "threshold 0.7, edit threshold 0.5"}


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_eval(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"editing: {shlex.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def table(rows, task_names):
    head = (["model", "editing", "M2T / edit threshold"] + task_names +
            ["avg acc", "TPF", "forwards", "edits", "re-masks", "tokens/s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e = r["result"]
        thr = f"{e['threshold']:g}"
        thr += f" / {e['edit_threshold']:g}" if e.get("edit_threshold") is not None else " / -"
        cells = [r["model_name"], r["mode"], thr]
        cells += [f"{100 * e['tasks'][t]['accuracy']:.0f}" for t in task_names]
        cells += [f"{100 * e['mean_task_accuracy']:.1f}", f"{e['tokens_per_forward']:.2f}",
                  str(e["forwards"]), str(e.get("edits", 0)), str(e.get("remasks", 0)),
                  f"{e['tokens_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows, cpu, threads):
    task_names = sorted(rows[0]["result"]["tasks"])
    max_new = rows[0]["result"]["max_new_tokens"]
    return ("Accuracy (exact match, %) per task on the held-out set, tokens per forward, total "
            "forwards, edits (T2T rewrites, re-masks included) and tokens/s; `dmoe eval`, batch "
            f"1, max_new_tokens {max_new}, block 32, {threads} thread(s), {cpu}. Written by "
            "`tools/train/editing.py` (`tools/train/run_t2t.sh`); what it shows: "
            "`docs/training.md`, \"Token editing\".\n\n" + table(rows, task_names) +
            "\nCommands, one per row:\n\n```sh\n" + "\n".join(r["command"] for r in rows) +
            "\n```\n")


def plot(path, rows, models):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m, _ in MODES]
    short = ["off\n(0.95)", "speed\n(0.5 / 0)", "quality\n(0.7 / 0.5)", "off\n@ 0.5", "off\n@ 0.7"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(models)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, m in enumerate(models):
        by_mode = {r["mode"]: r["result"] for r in rows if r["model"] == m}
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(modes))]
        acc = [100 * by_mode[x]["mean_task_accuracy"] for x in modes]
        tpf = [by_mode[x]["tokens_per_forward"] for x in modes]
        name = os.path.basename(os.path.normpath(m))
        a1.bar(xs, acc, width, color=colors[i % 4], label=name)
        a2.bar(xs, tpf, width, color=colors[i % 4], label=name)
        for x, v in zip(xs, acc):
            a1.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=7)
        for x, v in zip(xs, tpf):
            a2.text(x, v + 0.05, f"{v:.2f}", ha="center", fontsize=7)
    for ax, title, ylabel in [(a1, "accuracy (avg of the 5 tasks)", "exact-match accuracy (%)"),
                              (a2, "tokens per forward", "TPF")]:
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(short, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, loc="upper center", ncol=len(models))
    a1.set_ylim(0, 112)
    a2.set_ylim(0, 1.25 * max(r["result"]["tokens_per_forward"] for r in rows))
    fig.suptitle("LLaDA2.1 token editing (M2T / edit threshold) on the held-out tasks, block 32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dmoe", required=True)
    ap.add_argument("--models", required=True, help="comma-separated model directories")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="samples per task (0 = all)")
    ap.add_argument("--out", required=True, help="path prefix for .md, .json, .png")
    ap.add_argument("--replot", action="store_true",
                    help="only rewrite OUT.md and OUT.png from OUT.json (no evaluation)")
    args = ap.parse_args()
    if args.replot:
        with open(args.out + ".json") as f:
            saved = json.load(f)
        rows = saved["rows"]
        with open(args.out + ".md", "w") as f:
            f.write(markdown(rows, saved["machine"], saved["threads"]))
        plot(args.out + ".png", rows, list(dict.fromkeys(r["model"] for r in rows)))
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    models = args.models.split(",")
    rows = []
    for m in models:
        for mode, flags in MODES:
            cmd = [args.dmoe, "eval", "--model", m, "--tasks", args.tasks, *flags,
                   "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            e = run_eval(cmd + ["--json"])
            rows.append({"model": m, "model_name": os.path.basename(os.path.normpath(m)),
                         "mode": mode, "command": shlex.join(cmd), "result": e})
            print(f"{m} {mode}: accuracy {100 * e['mean_task_accuracy']:.1f}%, "
                  f"TPF {e['tokens_per_forward']:.2f}, {e['forwards']} forwards, "
                  f"{e.get('edits', 0)} edits, {e['tokens_per_second']:.0f} tokens/s", flush=True)
    cpu = machine()
    md = markdown(rows, cpu, args.threads)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump({"machine": cpu, "threads": args.threads, "presets": PRESETS, "rows": rows},
                  f, indent=2)
    plot(args.out + ".png", rows, models)
    print(md)


if __name__ == "__main__":
    main()
