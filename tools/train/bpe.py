"""A byte-level BPE encoder/decoder for the tokenizer.json files dmoe-train-tokenizer writes.

The training scripts need to encode data in Python; this implements exactly what
`tokenizers` (and dmoe's model/tokenizer.cc) do for that layout: added tokens matched first
(leftmost-longest), Split(regex, Isolated) pre-tokenizer, ByteLevel byte-to-unicode mapping,
BPE merges by rank. tools/train/verify.py checks it against `dmoe tokenize` on sample texts.
"""
import json
import os

import regex


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, directory):
        with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        model = tj["model"]
        self.vocab = dict(model["vocab"])
        merges = model["merges"]
        self.ranks = {}
        for i, m in enumerate(merges):
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            self.ranks[(a, b)] = i
        self.added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        self.special_ids = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
        pre = tj["pre_tokenizer"]
        pres = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
        pattern = next(p["pattern"]["Regex"] for p in pres if p["type"] == "Split")
        self.split_re = regex.compile(pattern)
        self.b2u = _bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update({i: t for t, i in self.added.items()})
        self.vocab_size = max(self.id_to_token) + 1
        # Longest first so "<|role_end|>" wins over any prefix.
        alts = sorted(self.added, key=len, reverse=True)
        self.added_re = regex.compile("|".join(regex.escape(a) for a in alts)) if alts else None
        self.cache = {}

    def token_id(self, token):
        return self.added.get(token, self.vocab.get(token))

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def _encode_plain(self, text, out):
        pos = 0
        for m in self.split_re.finditer(text):
            if m.start() > pos:  # Isolated keeps unmatched gaps as pieces too
                self._encode_piece(text[pos:m.start()], out)
            self._encode_piece(m.group(0), out)
            pos = m.end()
        if pos < len(text):
            self._encode_piece(text[pos:], out)

    def _encode_piece(self, piece, out):
        if piece:
            out.extend(self._bpe("".join(self.b2u[b] for b in piece.encode("utf-8"))))

    def encode(self, text):
        out = []
        pos = 0
        if self.added_re is not None:
            for m in self.added_re.finditer(text):
                self._encode_plain(text[pos:m.start()], out)
                out.append(self.added[m.group(0)])
                pos = m.end()
        self._encode_plain(text[pos:], out)
        return out

    def decode(self, ids, skip_special_tokens=True):
        chunks = []
        for i in ids:
            if i in self.special_ids:
                if not skip_special_tokens:
                    chunks.append(self.id_to_token[i].encode("utf-8"))
                continue
            tok = self.id_to_token.get(i)
            if tok is None:
                continue
            if i in self.added.values():
                chunks.append(tok.encode("utf-8"))
            else:
                chunks.append(bytes(self.u2b[c] for c in tok))
        return b"".join(chunks).decode("utf-8", errors="replace")


def render_chat(user):
    """The Ling 2.0 chat template for one user turn with the generation prompt
    (= dmoe's model::RenderChat({{"user", user}}, true))."""
    return ("<role>SYSTEM</role>detailed thinking off<|role_end|>"
            f"<role>HUMAN</role>{user}<|role_end|><role>ASSISTANT</role>")
