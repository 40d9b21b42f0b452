#!/usr/bin/python3
"""PNG plots of the training logs (JSON lines written by train.py).

  plots.py curves   --ar AR.jsonl --convert CONVERT.jsonl --sft SFT.jsonl --out curves.png
  plots.py schedule --convert CONVERT.jsonl --out block_schedule.png
  plots.py ablation --noise CONVERT.jsonl --no-noise NONOISE.jsonl --steps N --out noise.png
  plots.py t2t      --t2t T2T.jsonl [--control SFT_CONTROL.jsonl] --out t2t_curves.png

Curves are smoothed with an exponential moving average (raw values faint behind).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def ema(xs, a=0.05):
    out, m = [], None
    for x in xs:
        if x is None:
            out.append(None)
            continue
        m = x if m is None else (1 - a) * m + a * x
        out.append(m)
    return out


def curves(args):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, path, title, key in [
            (axes[0], args.ar, "1. AR parent: next-token loss", "loss"),
            (axes[1], args.convert, "2. conversion: block-diffusion loss (WSD blocks)", "ce"),
            (axes[2], args.sft, "3. SFT: masked-token loss", "ce")]:
        log = load(path)
        steps = [r["step"] for r in log]
        ys = [r.get(key, r["loss"]) for r in log]
        ax.plot(steps, ys, color="tab:blue", alpha=0.2, lw=0.8)
        ax.plot(steps, ema(ys), color="tab:blue", label=key if key == "loss" else "cross-entropy")
        if key == "ce" and any("cap_entropy" in r for r in log):
            ent = [r.get("cap_entropy") for r in log]
            ax.plot(steps, ema(ent), color="tab:green", label="CAP entropy term")
        if any("block" in r for r in log) and path == args.convert:
            ax2 = ax.twinx()
            ax2.step(steps, [r["block"] for r in log], where="post", color="tab:orange",
                     label="block size")
            ax2.set_yscale("log", base=2)
            ax2.set_ylabel("block size", color="tab:orange")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


def schedule(args):
    log = load(args.convert)
    steps = [r["step"] for r in log]
    blocks = [r["block"] for r in log]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.step(steps, blocks, where="post", color="tab:orange", lw=2)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted(set(blocks)))
    ax.get_yaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("conversion step")
    ax.set_ylabel("block size L_B")
    phases = {}
    for r in log:
        phases.setdefault(r["schedule_phase"], [r["step"], r["step"]])[1] = r["step"]
    colors = {"warmup": "tab:green", "stable": "tab:blue", "decay": "tab:purple"}
    for name, (a, b) in phases.items():
        ax.axvspan(a, b + 1, color=colors.get(name, "grey"), alpha=0.12, label=name)
    ax2 = ax.twinx()
    ce = [r["ce"] for r in log]
    ax2.plot(steps, ema(ce), color="tab:blue", lw=1, label="loss (EMA)")
    ax2.set_ylabel("masked-token loss")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title("WSD block-size schedule of the conversion (warmup 1 -> full sequence, "
                 "stable, decay -> 32)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


def ablation(args):
    a, b = load(args.noise)[:args.steps], load(args.no_noise)[:args.steps]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, title in [(axes[0], "ce", "masked-token loss"),
                           (axes[1], "grad_norm", "gradient norm (before clipping)"),
                           (axes[2], "mask_row_grad_norm", "grad norm of the <|mask|> embedding row")]:
        for log, label, color in [(a, "with noise on masked embeddings", "tab:blue"),
                                  (b, "without noise", "tab:red")]:
            xs = [r["step"] for r in log]
            ys = [r[key] for r in log]
            ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
            ax.plot(xs, ema(ys, 0.15), color=color, label=label)
        if key != "ce":
            ax.set_yscale("log")
        noise_end = max((r["step"] for r in a if r.get("noise_sigma")), default=None)
        if noise_end is not None:
            ax.axvline(noise_end, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("conversion step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


def t2t(args):
    log = load(args.t2t)
    ctl = load(args.control) if args.control else None
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    steps = [r["step"] for r in log]
    ax = axes[0]
    for key, label, color in [("ce", "T2T run: masked-token CE (M2T)", "tab:blue"),
                              ("sub_ce", "T2T run: CE at substituted tokens", "tab:red"),
                              ("keep_ce", "T2T run: CE at clean visible tokens", "tab:green")]:
        ys = [r.get(key) for r in log]
        ax.plot(steps, ema(ys), color=color, label=label)
    if ctl:
        ax.plot([r["step"] for r in ctl], ema([r["ce"] for r in ctl]), color="tab:blue", ls="--",
                label="control (plain SFT): masked-token CE")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (EMA)")
    ax.set_title("losses", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for key, label, color in [("sub_fixed", "substituted tokens predicted back (rewrite)", "tab:red"),
                              ("kept", "clean visible tokens predicted as they are (keep)",
                               "tab:green")]:
        ax.plot(steps, ema([r.get(key) for r in log]), color=color, label=label)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("step")
    ax.set_ylabel("argmax accuracy (EMA)")
    ax.set_title("T2T: argmax at visible answer tokens", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.suptitle("train.py t2t from models/tiny-diffusion (M2T + T2T)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--ar", required=True)
    c.add_argument("--convert", required=True)
    c.add_argument("--sft", required=True)
    c.add_argument("--out", required=True)
    s = sub.add_parser("schedule")
    s.add_argument("--convert", required=True)
    s.add_argument("--out", required=True)
    a = sub.add_parser("ablation")
    a.add_argument("--noise", required=True)
    a.add_argument("--no-noise", required=True)
    a.add_argument("--steps", type=int, default=100)
    a.add_argument("--title", default="Gaussian noise on masked embeddings in the first conversion steps")
    a.add_argument("--out", required=True)
    t = sub.add_parser("t2t")
    t.add_argument("--t2t", required=True)
    t.add_argument("--control")
    t.add_argument("--out", required=True)
    args = ap.parse_args()
    {"curves": curves, "schedule": schedule, "ablation": ablation, "t2t": t2t}[args.cmd](args)


if __name__ == "__main__":
    main()
