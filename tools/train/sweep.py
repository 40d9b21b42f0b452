#!/usr/bin/python3
"""Quality / speed sweep with `dmoe eval`: the AR parent (one token per forward) and the
diffusion model at confidence thresholds 0.5 ... 0.95, on the held-out task file.

  sweep.py --dmoe build/bin/dmoe --ar models/tiny-ar --diffusion models/tiny-diffusion \
           --tasks models/tiny-diffusion/eval_tasks.jsonl --out docs/training/sweep

Writes OUT.md (markdown table), OUT.json (every dmoe eval result) and OUT.png (accuracy and
TPF against threshold, the AR parent as the baseline). All rows are measured in one run on
the same machine, one request at a time (--batch 1).
"""
import argparse
import json
import os
import subprocess
import sys


def run_eval(dmoe, model, tasks, extra, threads):
    cmd = [dmoe, "eval", "--model", model, "--tasks", tasks, "--json", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sweep: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def table(rows, task_names):
    head = ["model", "decoding"] + task_names + ["avg acc", "TPF", "forwards", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, decoding, r in rows:
        cells = [name, decoding]
        cells += [f"{100 * r['tasks'][t]['accuracy']:.1f}" for t in task_names]
        cells += [f"{100 * r['mean_task_accuracy']:.1f}", f"{r['tokens_per_forward']:.2f}",
                  str(r["forwards"]), f"{r['tokens_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path, ar, diff, thresholds, task_names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    acc = [100 * d["mean_task_accuracy"] for d in diff]
    tpf = [d["tokens_per_forward"] for d in diff]
    ax.plot(thresholds, acc, "o-", color="tab:blue", label="diffusion: accuracy (avg of tasks)")
    ax.axhline(100 * ar["mean_task_accuracy"], color="tab:blue", ls="--",
               label="AR parent: accuracy")
    for t in task_names:
        ax.plot(thresholds, [100 * d["tasks"][t]["accuracy"] for d in diff], lw=0.8, alpha=0.45,
                label=f"  {t}")
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_ylim(0, 101)
    ax2 = ax.twinx()
    ax2.plot(thresholds, tpf, "s-", color="tab:red", label="diffusion: tokens per forward")
    ax2.axhline(1.0, color="tab:red", ls="--", label="AR parent: TPF = 1")
    ax2.set_ylabel("tokens per forward (TPF)")
    ax2.set_ylim(0, max(tpf + [1.0]) * 1.15)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left", ncol=2)
    ax.set_title("tiny LLaDA2.0 recipe: quality and speed vs threshold (block 32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dmoe", required=True)
    ap.add_argument("--ar", required=True)
    ap.add_argument("--diffusion", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.85,0.9,0.95")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="samples per task (0 = all)")
    ap.add_argument("--out", required=True, help="path prefix for .md, .json, .png")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    common = ["--max-new-tokens", str(args.max_new_tokens), "--limit", str(args.limit)]
    thresholds = [float(t) for t in args.thresholds.split(",")]

    ar = run_eval(args.dmoe, args.ar, args.tasks, common + ["--mode", "ar"], args.threads)
    print(f"AR parent: accuracy {100 * ar['mean_task_accuracy']:.1f}%, "
          f"{ar['tokens_per_second']:.0f} tokens/s", flush=True)
    diff = []
    for t in thresholds:
        d = run_eval(args.dmoe, args.diffusion, args.tasks, common + ["--threshold", str(t)],
                     args.threads)
        diff.append(d)
        print(f"diffusion @ {t}: accuracy {100 * d['mean_task_accuracy']:.1f}%, "
              f"TPF {d['tokens_per_forward']:.2f}, {d['tokens_per_second']:.0f} tokens/s",
              flush=True)
    # AR decoding of the diffusion model itself is not meaningful (it predicts token i at
    # position i); the parent is the baseline.
    task_names = sorted(ar["tasks"])
    rows = [(os.path.basename(os.path.normpath(args.ar)), "AR (greedy)", ar)]
    rows += [(os.path.basename(os.path.normpath(args.diffusion)), f"threshold {t}", d)
             for t, d in zip(thresholds, diff)]
    md = ("Accuracy (exact match, %) per task on the held-out set, tokens per forward, "
          "total forwards and tokens/s (`dmoe eval`, batch 1, "
          f"max_new_tokens {args.max_new_tokens}, block 32).\n\n" + table(rows, task_names))
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump({"ar": ar, "diffusion": dict(zip(map(str, thresholds), diff))}, f, indent=2)
    plot(args.out + ".png", ar, diff, thresholds, task_names)
    print(md)


if __name__ == "__main__":
    main()
