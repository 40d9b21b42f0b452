#!/usr/bin/python3
"""Trainer for the tiny LLaDA2.0 recipe (docs/training.md): one entry point, four phases.

  train.py ar      next-token pretraining of the autoregressive parent (bailing_moe_v2)
  train.py convert continued pretraining with the block-diffusion objective under the
                   Warmup-Stable-Decay block-size schedule, Gaussian noise on the embedding
                   output at masked positions in the first steps (MODEL-SPEC.md §5)
  train.py sft     block-diffusion SFT on the chat tasks: prompt never masked, mask ratio drawn
                   from a band, optional confidence-aware (CAP) entropy term
  train.py t2t     LLaDA2.1-style SFT (docs/training/editing.md): the SFT objective (M2T: fill
                   masks) plus T2T editing: a random fraction of the answer tokens left visible
                   is replaced by random vocabulary tokens, and every visible answer token is
                   trained to predict the original token (rewrite the substituted ones, keep
                   the others); the prompt is never masked nor substituted

Each phase reads a state file (--init), writes one (--out), and appends one JSON line per step
to --log (loss, grad norm, lr, block size, ...). A progress bar goes to stderr.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Tokenizer, render_chat  # noqa: E402
from model import Model, ModelConfig  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Data

class Specials:
    def __init__(self, tok):
        self.eos = tok.token_id("<|endoftext|>")
        self.mask = tok.token_id("<|mask|>")
        self.role_end = tok.token_id("<|role_end|>")


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def encode_data(data_dir, tok_dir, cache):
    """Encodes the corpus and the chat tasks once (cached in `cache`)."""
    if os.path.exists(cache):
        return torch.load(cache)
    tok = Tokenizer(tok_dir)
    sp = Specials(tok)
    corpus = [tok.encode(r["text"]) + [sp.eos] for r in load_jsonl(os.path.join(data_dir, "corpus_train.jsonl"))]
    corpus_eval = [tok.encode(r["text"]) + [sp.eos] for r in load_jsonl(os.path.join(data_dir, "corpus_eval.jsonl"))]
    chats = []
    for r in load_jsonl(os.path.join(data_dir, "tasks_train.jsonl")):
        prompt = tok.encode(render_chat(r["chat"]))
        answer = tok.encode(r["answer"]) + [sp.role_end]
        chats.append((r["task"], prompt, answer))
    out = {"corpus": corpus, "corpus_eval": corpus_eval, "chats": chats,
           "vocab": tok.vocab_size, "eos": sp.eos, "mask": sp.mask, "role_end": sp.role_end}
    torch.save(out, cache)
    return out


class Doc:
    """One sequence starting at position 0: ids, how many leading ids are prompt (never
    masked in SFT), and whether it takes part in the loss."""
    __slots__ = ("ids", "prompt_len", "loss")

    def __init__(self, ids, prompt_len=0, loss=True):
        self.ids, self.prompt_len, self.loss = ids, prompt_len, loss


def chat_doc(prompt, answer, eos, pad_to_block):
    ids = prompt + answer
    if pad_to_block:
        # SFT layout (dFactory): the response is padded with <|endoftext|> to a block
        # boundary and the pads are part of the masked/loss region, so the model learns to
        # fill the rest of the last block with EOS.
        ids = ids + [eos] * ((-len(ids)) % pad_to_block)
    else:
        ids = ids + [eos]
    return Doc(ids, prompt_len=len(prompt))


class Batcher:
    """Packs documents into rows of length L. Every document keeps its own positions
    (0, 1, ...) and attends only to itself (document mask), exactly like a prompt at inference;
    the end of a row is filled with a no-loss pad document."""

    def __init__(self, L, eos, rng):
        self.L, self.eos, self.rng = L, eos, rng

    def rows(self, docs, n_rows):
        L = self.L
        ids = torch.full((n_rows, L), self.eos, dtype=torch.long)
        doc = torch.zeros((n_rows, L), dtype=torch.long)
        pos = torch.zeros((n_rows, L), dtype=torch.long)
        prompt = torch.zeros((n_rows, L), dtype=torch.bool)
        loss = torch.zeros((n_rows, L), dtype=torch.bool)
        it = iter(docs)
        pending = None
        for r in range(n_rows):
            c, d = 0, 0
            while True:
                if pending is None:
                    pending = next(it)
                n = len(pending.ids)
                if n > L:  # long document: a window of it, as a document of its own
                    s = self.rng.randrange(0, n - L + 1)
                    pending = Doc(pending.ids[s:s + L], 0, pending.loss)
                    n = L
                if c + n > L:
                    break
                ids[r, c:c + n] = torch.tensor(pending.ids)
                doc[r, c:c + n] = d
                pos[r, c:c + n] = torch.arange(n)
                prompt[r, c:c + pending.prompt_len] = True
                loss[r, c:c + n] = pending.loss
                c += n
                d += 1
                pending = None
            if c < L:  # pad document
                doc[r, c:] = d
                pos[r, c:] = torch.arange(L - c)
        return {"ids": ids, "doc": doc, "pos": pos, "prompt": prompt, "loss": loss}


def doc_stream(docs, rng):
    """Endless shuffled passes over `docs` (a list of callables or Doc)."""
    while True:
        order = list(range(len(docs)))
        rng.shuffle(order)
        for i in order:
            yield docs[i]


def mixed_stream(streams, weights, rng):
    while True:
        yield next(rng.choices(streams, weights)[0])


# ---------------------------------------------------------------------------------------------
# Masks and objectives

def additive(allowed):
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))[:, None]


def ar_batch(b, answer_only):
    """Causal + document mask; next-token targets inside each document (with `answer_only`,
    not the prompt tokens of chat documents: a user's random words are not predictable)."""
    doc, pos = b["doc"], b["pos"]
    allowed = (doc[:, :, None] == doc[:, None, :]) & (pos[:, None, :] <= pos[:, :, None])
    tgt = torch.full_like(b["ids"], -100)
    same = (doc[:, 1:] == doc[:, :-1]) & b["loss"][:, 1:]
    if answer_only:
        same &= ~b["prompt"][:, 1:]
    tgt[:, :-1] = torch.where(same, b["ids"][:, 1:], torch.full_like(b["ids"][:, 1:], -100))
    return allowed, tgt


def bd_inputs(b, block, mask_id, ratio_lo, ratio_hi, conditional, rng_t, sub=None):
    """Builds the [x_t ; x_0] block-diffusion input (MODEL-SPEC.md §4.2 training mask).

    x_t: every loss token (not prompt tokens when `conditional`) is replaced by MASK with
    probability t, t ~ U(ratio_lo, ratio_hi) drawn per document. x_t block b attends to x_t
    block b (bidirectional) and to clean x_0 blocks < b; x_0 is block-causal. Only x_0
    tokens that some x_t block can see (blocks before their document's last block) are fed.

    `sub` = (lo, hi, n_ordinary) adds the T2T corruption (LLaDA2.1): of the loss tokens left
    visible in x_t, each is replaced with probability s, s ~ U(lo, hi) per document, by a
    token drawn uniformly from the ordinary vocabulary [0, n_ordinary) (no special tokens);
    a draw equal to the original leaves the token clean. x_0 stays clean.
    Returns ids, positions, additive mask, masked positions of x_t, targets, and the
    substituted and visible (candidates for T2T: loss tokens not masked) positions of x_t."""
    ids, doc, pos = b["ids"], b["doc"], b["pos"]
    R, L = ids.shape
    ndoc = int(doc.max()) + 1
    t = ratio_lo + (ratio_hi - ratio_lo) * torch.rand((R, ndoc), generator=rng_t)
    t_tok = t.gather(1, doc)
    can = b["loss"] & ~(b["prompt"] if conditional else torch.zeros_like(b["prompt"]))
    masked = can & (torch.rand((R, L), generator=rng_t) < t_tok)
    # At least one masked token per row keeps the loss defined.
    for r in range(R):
        if not masked[r].any() and can[r].any():
            cand = can[r].nonzero().flatten()
            masked[r, cand[torch.randint(len(cand), (1,), generator=rng_t)]] = True
    xt = torch.where(masked, torch.full_like(ids, mask_id), ids)
    visible = can & ~masked
    subst = torch.zeros_like(masked)
    if sub is not None:
        s_lo, s_hi, n_ordinary = sub
        s = s_lo + (s_hi - s_lo) * torch.rand((R, ndoc), generator=rng_t)
        noise = torch.randint(0, n_ordinary, (R, L), generator=rng_t)
        subst = visible & (torch.rand((R, L), generator=rng_t) < s.gather(1, doc)) & (noise != ids)
        xt = torch.where(subst, noise, xt)
    blk = pos // block
    # last block index of each token's document
    last = torch.zeros((R, ndoc), dtype=torch.long).scatter_reduce_(1, doc, blk, reduce="amax")
    keep0 = blk < last.gather(1, doc)
    n0 = int(keep0.sum(1).max())
    if n0 > 0:
        ids0 = torch.full((R, n0), mask_id, dtype=torch.long)
        doc0 = torch.full((R, n0), -1, dtype=torch.long)
        pos0 = torch.zeros((R, n0), dtype=torch.long)
        for r in range(R):
            sel = keep0[r].nonzero().flatten()
            k = len(sel)
            ids0[r, :k], doc0[r, :k], pos0[r, :k] = ids[r, sel], doc[r, sel], pos[r, sel]
            pos0[r, k:] = torch.arange(n0 - k)  # padding: a document of its own
        bq, b0 = blk, pos0 // block
        tt = (doc[:, :, None] == doc[:, None, :]) & (bq[:, :, None] == bq[:, None, :])
        t0 = (doc[:, :, None] == doc0[:, None, :]) & (b0[:, None, :] < bq[:, :, None])
        oo = (doc0[:, :, None] == doc0[:, None, :]) & (b0[:, None, :] <= b0[:, :, None])
        allowed = torch.cat([torch.cat([tt, t0], 2),
                             torch.cat([torch.zeros((R, n0, L), dtype=torch.bool), oo], 2)], 1)
        all_ids, all_pos = torch.cat([xt, ids0], 1), torch.cat([pos, pos0], 1)
    else:  # block covers every document: plain MDLM, no clean stream needed
        allowed = (doc[:, :, None] == doc[:, None, :]) & (blk[:, :, None] == blk[:, None, :])
        all_ids, all_pos = xt, pos
    return all_ids, all_pos, additive(allowed), masked, ids, subst, visible


# ---------------------------------------------------------------------------------------------
# Training loop

class Progress:
    def __init__(self, total, label):
        self.total, self.label, self.t0 = total, label, time.time()
        self.tty = sys.stderr.isatty()
        self.last_print = 0

    def update(self, step, info):
        now = time.time()
        if not self.tty and now - self.last_print < 10 and step != self.total:
            return
        self.last_print = now
        frac = step / self.total
        el = now - self.t0
        eta = el / max(frac, 1e-9) * (1 - frac)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        line = (f"{self.label} [{bar}] {step}/{self.total} {info} "
                f"{el / 60:.1f}m elapsed, eta {eta / 60:.1f}m")
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else (line + "\n"))
        if self.tty and step == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def lr_at(step, total, base, warmup, kind, final_frac=0.1, decay_frac=0.2):
    if step < warmup:
        return base * (step + 1) / warmup
    if kind == "cosine":
        p = (step - warmup) / max(1, total - warmup)
        return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))
    # WSD: constant, then linear decay over the last decay_frac of the steps
    start = int(total * (1 - decay_frac))
    if step < start:
        return base
    return base * (1 - (1 - final_frac) * (step - start) / max(1, total - start))


def make_optimizer(model, lr, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def update_expert_bias(model, rate):
    """Aux-loss-free load balancing: raise the bias of under-loaded experts, lower the others."""
    for moe in model.moe_layers():
        if moe.last_load is None:
            continue
        load = moe.last_load.float()
        moe.gate.expert_bias += rate * torch.sign(load.mean() - load)


def block_schedule(args, step):
    """WSD block size at `step` of the conversion: (block, phase name)."""
    for until, block, name in args.schedule:
        if step < until:
            return block, name
    return args.schedule[-1][1], args.schedule[-1][2]


def parse_schedule(spec, total):
    """"1:0.08,4:0.08,32:0.08,128:0.4,64:0.18,32:0.18" -> [(end_step, block, phase)]."""
    parts = [p.split(":") for p in spec.split(",")]
    fracs = [float(f) for _, f in parts]
    blocks = [int(b) for b, _ in parts]
    peak = blocks.index(max(blocks))
    out, acc = [], 0.0
    for i, (b, f) in enumerate(zip(blocks, fracs)):
        acc += f / sum(fracs)
        name = "warmup" if i < peak else ("stable" if i == peak else "decay")
        out.append((int(round(acc * total)), b, name))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=["ar", "convert", "sft", "t2t"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work", required=True, help="directory for caches")
    ap.add_argument("--init", help="state file to start from (convert, sft)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--rows", type=int, default=24, help="rows per batch")
    ap.add_argument("--seq", type=int, default=128, help="row length L")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--bias-rate", type=float, default=1e-3, help="expert-bias update rate")
    ap.add_argument("--task-weight", type=float, default=0.5, help="share of chat-task documents")
    ap.add_argument("--answer-only", type=int, default=1,
                    help="ar: no loss on the prompt tokens of chat documents")
    ap.add_argument("--save-every", type=int, default=0, help="also save OUT.stepN every N steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stop-after", type=int, default=0,
                    help="stop after this many steps (the schedules still span --steps); for "
                         "ablations that replay the first steps of a run")
    # model shape (ar only; later phases take it from --init)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--experts-per-tok", type=int, default=4)
    # conversion
    ap.add_argument("--schedule", default="1:0.08,4:0.08,32:0.08,128:0.4,64:0.18,32:0.18")
    ap.add_argument("--noise-steps", type=int, default=0,
                    help="steps with Gaussian noise on masked embeddings (linear decay to 0)")
    ap.add_argument("--noise-scale", type=float, default=1.0,
                    help="noise std relative to the mean per-dimension RMS of the embedding rows")
    # sft
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--ratio-lo", type=float, default=0.05)
    ap.add_argument("--ratio-hi", type=float, default=1.0)
    ap.add_argument("--cap", type=float, default=0.0, help="CAP confidence-loss weight")
    # t2t (the sft options above apply too)
    ap.add_argument("--sub-lo", type=float, default=0.0,
                    help="t2t: substitution rate of visible answer tokens, per document, from")
    ap.add_argument("--sub-hi", type=float, default=0.3, help="t2t: ... up to")
    ap.add_argument("--draft-frac", type=float, default=0.0,
                    help="t2t: self-generated corruption: a no-grad forward drafts the masked "
                         "tokens (argmax) and this share of the masked positions is revealed "
                         "with its draft, to be corrected like a substitute (0 = off)")
    ap.add_argument("--t2t-weight", type=float, default=1.0,
                    help="t2t: weight of the mean CE over visible answer tokens (substituted "
                         "ones: rewrite; clean ones: keep) next to the masked-token mean CE")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    rng_t = torch.Generator().manual_seed(args.seed + 1)
    os.makedirs(args.work, exist_ok=True)
    data = encode_data(args.data, args.tokenizer, os.path.join(args.work, "encoded.pt"))
    eos, mask_id = data["eos"], data["mask"]
    t2t = args.phase == "t2t"
    sub = None
    if t2t:
        # Substitutes are ordinary BPE tokens: the ids below the first added (special) token.
        specials = Tokenizer(args.tokenizer).special_ids
        sub = (args.sub_lo, args.sub_hi, min(specials))

    if args.init:
        state = torch.load(args.init)
        cfg = ModelConfig(**state["config"])
    else:
        vocab = (data["vocab"] + 63) // 64 * 64
        cfg = ModelConfig(vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                          num_experts=args.experts, num_experts_per_tok=args.experts_per_tok)
        state = None
    model = Model(cfg)
    if state:
        model.load_state_dict(state["model"])
    model.train()
    opt = make_optimizer(model, args.lr, args.wd)

    # Document streams.
    corpus = [Doc(ids) for ids in data["corpus"]]
    sft = args.phase in ("sft", "t2t")
    # Diffusion phases: chat documents are padded with EOS to a block boundary (the model
    # learns to fill the rest of the answer's last block with EOS) and their prompt is never
    # masked; corpus documents are masked everywhere.
    pad = args.block if args.phase != "ar" else 0
    chats = [chat_doc(p, a, eos, pad) for _, p, a in data["chats"]]
    chats = [d for d in chats if len(d.ids) <= args.seq]
    if sft:
        stream = doc_stream(chats, rng)
    else:
        stream = mixed_stream([doc_stream(corpus, rng), doc_stream(chats, rng)],
                              [1 - args.task_weight, args.task_weight], rng)
    batcher = Batcher(args.seq, eos, rng)

    if args.phase == "convert":
        args.schedule = parse_schedule(args.schedule, args.steps)
        with torch.no_grad():
            emb = model.word_embeddings.weight[:data["vocab"]]
            emb_rms = float(emb.pow(2).mean().sqrt())
            mask_rms = float(model.word_embeddings.weight[mask_id].pow(2).mean().sqrt())
        print(json.dumps({"embedding_rms": emb_rms, "mask_embedding_rms": mask_rms}), file=sys.stderr)

    def save(path):
        torch.save({"config": cfg.__dict__, "model": model.state_dict(),
                    "meta": {"phase": args.phase, "steps": args.steps, "seed": args.seed,
                             "seconds": time.time() - t_start,
                             "cpu_seconds": time.process_time() - cpu_start,
                             "tokens": tokens}}, path)

    logf = open(args.log, "w")
    prog = Progress(args.steps, args.phase)
    t_start, cpu_start = time.time(), time.process_time()
    tokens = 0
    last = min(args.steps, args.stop_after) if args.stop_after > 0 else args.steps
    prog.total = last
    for step in range(last):
        kind = "cosine" if args.phase == "ar" or sft else "wsd"
        lr = lr_at(step, args.steps, args.lr, args.warmup, kind)
        for g in opt.param_groups:
            g["lr"] = lr
        b = batcher.rows(stream, args.rows)
        rec = {"step": step, "lr": lr}
        if args.phase == "ar":
            allowed, tgt = ar_batch(b, args.answer_only)
            sel = tgt != -100
            logits = model(b["ids"], b["pos"], additive(allowed), select=sel)
            loss = F.cross_entropy(logits, tgt[sel])
            tokens += int(sel.sum())
        else:
            if args.phase == "convert":
                block, phase_name = block_schedule(args, step)
                rec.update(block=block, schedule_phase=phase_name)
                lo, hi, cond = 0.05, 1.0, True
            else:
                block, lo, hi, cond = args.block, args.ratio_lo, args.ratio_hi, True
                rec["block"] = block
            ids, pos, mask_add, masked, tgt, subst, visible = bd_inputs(
                b, block, mask_id, lo, hi, cond, rng_t, sub)
            noise = None
            if args.phase == "convert" and step < args.noise_steps:
                sigma = args.noise_scale * emb_rms * (1 - step / args.noise_steps)
                noise = torch.zeros(ids.shape + (cfg.hidden_size,))
                L = masked.shape[1]
                noise[:, :L][masked] = sigma * torch.randn(int(masked.sum()), cfg.hidden_size)
                rec["noise_sigma"] = sigma
            L = masked.shape[1]
            if t2t and args.draft_frac > 0:
                # Self-generated T2T errors: the model's own draft of masked positions (a no-grad
                # pass over the same input), revealed at a random share of them; wrong drafts
                # are errors the model finds plausible, unlike random vocabulary tokens.
                with torch.no_grad():
                    sel_d = torch.zeros(ids.shape, dtype=torch.bool)
                    sel_d[:, :L] = masked
                    draft = torch.full_like(masked, mask_id, dtype=torch.long)
                    draft[masked] = model(ids, pos, mask_add, select=sel_d).argmax(-1)
                reveal = masked & (torch.rand(masked.shape, generator=rng_t) < args.draft_frac)
                ids = ids.clone()
                ids[:, :L] = torch.where(reveal, draft, ids[:, :L])
                masked, visible = masked & ~reveal, visible | reveal
                subst = subst | (reveal & (draft != tgt))
                rec["draft_wrong"] = int((reveal & (draft != tgt)).sum())
                rec["draft_revealed"] = int(reveal.sum())
            sel_t = masked | visible if t2t else masked
            sel = torch.zeros(ids.shape, dtype=torch.bool)
            sel[:, :L] = sel_t
            all_logits = model(ids, pos, mask_add, embed_noise=noise, select=sel)
            # Selected rows come in row-major order, so masks indexed by sel_t line up.
            is_m = masked[sel_t]
            logits = all_logits[is_m]
            ce = F.cross_entropy(logits, tgt[masked], reduction="none")
            loss = ce.mean() if len(ce) else logits.sum() * 0.0
            rec["ce"] = float(loss)
            if t2t:
                # T2T: every visible answer token predicts the original token, so the model
                # learns both to rewrite substitutes and to keep correct tokens (a model
                # trained on substitutes only would learn that every visible token is wrong).
                vis_logits = all_logits[~is_m]
                vis_tgt = tgt[sel_t][~is_m]
                is_sub = subst[sel_t][~is_m]
                if len(vis_tgt):
                    vce = F.cross_entropy(vis_logits, vis_tgt, reduction="none")
                    loss = loss + args.t2t_weight * vce.mean()
                    with torch.no_grad():
                        right_v = vis_logits.argmax(-1) == vis_tgt
                    rec["t2t_ce"] = float(vce.mean())
                    rec["substituted"] = int(is_sub.sum())
                    rec["visible"] = len(vis_tgt)
                    if is_sub.any():
                        rec["sub_ce"] = float(vce[is_sub].mean())
                        rec["sub_fixed"] = float(right_v[is_sub].float().mean())
                    if (~is_sub).any():
                        rec["keep_ce"] = float(vce[~is_sub].mean())
                        rec["kept"] = float(right_v[~is_sub].float().mean())
                tokens += int((~is_m).sum())
            if sft and args.cap > 0:
                # CAP: entropy of the predictive distribution at masked positions the model
                # already gets right; minimising it sharpens confident predictions.
                with torch.no_grad():
                    right = logits.argmax(-1) == tgt[masked]
                if right.any():
                    lp = F.log_softmax(logits[right], -1)
                    ent = -(lp.exp() * lp).sum(-1).mean()
                    loss = loss + args.cap * ent
                    rec["cap_entropy"] = float(ent)
            tokens += int(masked.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g = model.word_embeddings.weight.grad
            rec["mask_row_grad_norm"] = float(g[mask_id].norm()) if g is not None else 0.0
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            update_expert_bias(model, args.bias_rate)
        rec.update(loss=float(loss), grad_norm=float(gn), tokens=tokens,
                   seconds=time.time() - t_start, cpu_seconds=time.process_time() - cpu_start)
        if not math.isfinite(rec["loss"]):
            rec["loss"] = None
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        info = f"loss {rec['loss'] if rec['loss'] is None else round(rec['loss'], 3)}"
        if "sub_fixed" in rec:
            info += f" fixed {rec['sub_fixed']:.2f}"
        if "block" in rec:
            info += f" block {rec['block']}"
        prog.update(step + 1, info)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < last:
            save(args.out + f".step{step + 1}")
    logf.close()
    save(args.out)


if __name__ == "__main__":
    main()
