"""The LLaDA2.0 / Ling 2.0 (`bailing_moe_v2`) architecture in PyTorch, following
MODEL-SPEC.md §1.2-1.3 exactly, so that dmoe's C++ engine reproduces it:

  fused QKV (Q rows, then K, then V; no bias) -> per-head RMSNorm of q and k -> partial NeoX RoPE
  on the first rotary_dim dims -> GQA attention (scale 1/sqrt(head_dim), additive mask) ->
  dense; RMSNorm before attention and MLP; layer 0 dense SwiGLU; layers >= first_k_dense_replace
  MoE: fp32 router, sigmoid scores, expert bias for selection only, group-limited top-k (groups
  scored by the sum of their top-2 biased scores), weights = unbiased scores renormalised and
  scaled by routed_scaling_factor, plus an always-on shared expert; final RMSNorm; untied
  lm_head.

The same module serves both objectives: next-token (AR, causal mask, logits[i] predict i+1)
and block diffusion (block-causal masks, logits[i] predict token i). The mask is passed in.
"""
import dataclasses
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class ModelConfig:
    vocab_size: int = 2816
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    moe_intermediate_size: int = 64
    num_experts: int = 16
    num_experts_per_tok: int = 4
    num_shared_experts: int = 1
    n_group: int = 4
    topk_group: int = 2
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    max_position_embeddings: int = 4096
    init_std: float = 0.02

    @property
    def rotary_dim(self):
        return int(self.head_dim * self.partial_rotary_factor)

    def hf_config(self, kind, pad_token_id, eos_token_id, block_length=32):
        """config.json in the HF layout dmoe's model/config.cc parses (MODEL-SPEC.md §1.1)."""
        diffusion = kind == "diffusion"
        c = {
            "architectures": ["LLaDA2MoeModelLM" if diffusion else "BailingMoeV2ForCausalLM"],
            "model_type": "llada2_moe" if diffusion else "bailing_moe_v2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "use_qkv_bias": False,
            "use_bias": False,
            "use_qk_norm": True,
            "use_rmsnorm": True,
            "rms_norm_eps": self.rms_norm_eps,
            "norm_head": False,
            "norm_softmax": False,
            "tie_word_embeddings": False,
            "embedding_dropout": 0.0,
            "attention_dropout": 0.0,
            "output_dropout": 0.0,
            "initializer_range": self.init_std,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rotary_dim": self.rotary_dim,
            "use_cache": True,
            "use_sliding_window": False,
            "num_experts": self.num_experts,
            "num_shared_experts": self.num_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "moe_intermediate_size": self.moe_intermediate_size,
            "first_k_dense_replace": self.first_k_dense_replace,
            "routed_scaling_factor": self.routed_scaling_factor,
            "norm_topk_prob": self.norm_topk_prob,
            "score_function": "sigmoid",
            "moe_router_enable_expert_bias": True,
            "router_dtype": "fp32",
            "output_router_logits": False,
            "torch_dtype": "bfloat16",
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
        }
        if diffusion:
            c["block_length"] = block_length  # dmoe's optional key (not in HF configs)
        return c

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rope_cos_sin(positions, rotary_dim, theta):
    """cos/sin [*, rotary_dim] for integer positions (HF default rope, cat(freqs, freqs))."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_partial_rope(x, cos, sin, rotary_dim):
    """x [B, heads, T, D]; NeoX rotate_half on the first rotary_dim dims, the rest unchanged."""
    xr, xp = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rot = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rot * sin, xp], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.query_key_value = nn.Linear(
            c.hidden_size, (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim, bias=False)
        self.dense = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.query_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.key_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin, attn_bias):
        c = self.c
        B, T, _ = x.shape
        nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        qkv = self.query_key_value(x).view(B, T, nq + 2 * nkv, d)
        q = self.query_layernorm(qkv[:, :, :nq]).transpose(1, 2)           # [B, nq, T, d]
        k = self.key_layernorm(qkv[:, :, nq:nq + nkv]).transpose(1, 2)     # [B, nkv, T, d]
        v = qkv[:, :, nq + nkv:].transpose(1, 2)
        q = apply_partial_rope(q, cos, sin, c.rotary_dim)
        k = apply_partial_rope(k, cos, sin, c.rotary_dim)
        rep = nq // nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * (1.0 / math.sqrt(d)) + attn_bias
        probs = torch.softmax(scores, dim=-1)
        o = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(B, T, nq * d)
        return self.dense(o)


class DenseMLP(nn.Module):
    def __init__(self, hidden, width):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Router: `mlp.gate.weight` [E, H] and the buffer `mlp.gate.expert_bias` [E] (fp32)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c.num_experts, c.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(c.num_experts))


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        E, H, I = c.num_experts, c.hidden_size, c.moe_intermediate_size
        self.gate = Gate(c)
        # Stacked expert weights (exported per expert as mlp.experts.{e}.*_proj.weight).
        self.w_gate = nn.Parameter(torch.empty(E, I, H))
        self.w_up = nn.Parameter(torch.empty(E, I, H))
        self.w_down = nn.Parameter(torch.empty(E, H, I))
        self.shared_experts = DenseMLP(H, c.num_shared_experts * I)
        self.last_load = None  # tokens per expert in the last forward (for the bias update)

    def route(self, h):
        """MODEL-SPEC.md §1.3. Returns (expert indices [N, K], weights [N, K])."""
        c = self.c
        N = h.shape[0]
        logits = h.float() @ self.gate.weight.float().t()
        s = torch.sigmoid(logits)
        with torch.no_grad():
            s_sel = s + self.gate.expert_bias
            per = c.num_experts // c.n_group
            gscore = s_sel.view(N, c.n_group, per).topk(min(2, per), dim=-1).values.sum(-1)
            gidx = gscore.topk(c.topk_group, dim=-1).indices
            gmask = torch.zeros(N, c.n_group, dtype=torch.bool).scatter_(1, gidx, True)
            emask = gmask[:, :, None].expand(N, c.n_group, per).reshape(N, c.num_experts)
            idx = s_sel.masked_fill(~emask, float("-inf")).topk(c.num_experts_per_tok, dim=-1).indices
        w = s.gather(1, idx)
        if c.num_experts_per_tok > 1 and c.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * c.routed_scaling_factor
        return idx, w

    def forward(self, x):
        B, T, H = x.shape
        h = x.reshape(B * T, H)
        idx, w = self.route(h)
        N, K = idx.shape
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.c.num_experts)
        self.last_load = counts.detach()
        token_of = order // K
        out = torch.zeros(N, H, dtype=h.dtype)
        start = 0
        wflat = w.reshape(-1).to(h.dtype)
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            sel = order[start:start + n]
            tok = token_of[start:start + n]
            xe = h.index_select(0, tok)
            ye = F.linear(F.silu(F.linear(xe, self.w_gate[e])) * F.linear(xe, self.w_up[e]),
                          self.w_down[e])
            out.index_add_(0, tok, ye * wflat.index_select(0, sel)[:, None])
            start += n
        out = out + self.shared_experts(h)
        return out.view(B, T, H)


class DecoderLayer(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attention = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = DenseMLP(c.hidden_size, c.intermediate_size) if layer < c.first_k_dense_replace \
            else MoE(c)

    def forward(self, x, cos, sin, attn_bias):
        x = x + self.attention(self.input_layernorm(x), cos, sin, attn_bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, l) for l in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = self.c.init_std
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=std)
        # Output projections scaled down with depth (GPT-2 style) for a stable start.
        for layer in self.layers:
            nn.init.normal_(layer.attention.dense.weight, std=std / math.sqrt(2 * self.c.num_hidden_layers))

    def moe_layers(self):
        return [l.mlp for l in self.layers if isinstance(l.mlp, MoE)]

    def forward(self, ids, positions, attn_bias, embed_noise=None, select=None):
        """ids, positions [B, T] (int64); attn_bias [B, 1, T, T] additive (0 / -inf, query x
        key; every query must see at least one key) -> logits fp32 [B, T, V], or [N, V] for the
        N positions where the bool mask `select` [B, T] is set (the only rows a loss needs).
        embed_noise: optional [B, T, H] added to the embedding output (conversion trick)."""
        x = self.word_embeddings(ids)
        if embed_noise is not None:
            x = x + embed_noise
        cos, sin = rope_cos_sin(positions, self.c.rotary_dim, self.c.rope_theta)
        cos, sin = cos[:, None], sin[:, None]
        for layer in self.layers:
            x = layer(x, cos, sin, attn_bias)
        if select is not None:
            x = x[select]
        return self.lm_head(self.norm(x)).float()


# ---------------------------------------------------------------------------------------------
# Attention masks. Every row of a batch packs documents; doc [B, T] numbers them and pos [B, T]
# is the position inside the document (each document starts at 0, exactly like a prompt at
# inference), so documents never see each other and block boundaries are multiples of B from
# each document's start.

def additive_mask(allowed):
    """bool [B, T, T] -> additive float [B, 1, T, T]."""
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[:, None]


def causal_mask(doc, pos):
    same = doc[:, :, None] == doc[:, None, :]
    return same & (pos[:, None, :] <= pos[:, :, None])


def block_causal_mask(doc, pos, block):
    """Single-stream block-causal mask (inference, §4.2): key block <= query block."""
    same = doc[:, :, None] == doc[:, None, :]
    bq, bk = pos[:, :, None] // block, pos[:, None, :] // block
    return same & (bk <= bq)


def bd_training_mask(doc, pos, block):
    """The block-diffusion training mask over [x_t ; x_0] (length 2T, §4.2 / report Eq. 3):
    x_t block b sees x_t block b and x_0 blocks < b; x_0 is block-causal; x_0 never sees x_t."""
    same = doc[:, :, None] == doc[:, None, :]
    bq, bk = pos[:, :, None] // block, pos[:, None, :] // block
    tt = same & (bq == bk)
    t0 = same & (bk < bq)
    oo = same & (bk <= bq)
    top = torch.cat([tt, t0], dim=2)
    bottom = torch.cat([torch.zeros_like(oo), oo], dim=2)
    return torch.cat([top, bottom], dim=1)
