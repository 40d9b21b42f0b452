#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ from the repo's own test data
(models/tiny-diffusion, tests/tokenizer/data) and hand-written requests. Re-run after a format
change: python3 tests/fuzz/make_corpus.py (the protobuf seeds need protoc)."""
import json
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def safetensors(tensors, metadata=None, pad=True):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    shutil.rmtree(OUT, ignore_errors=True)

    # safetensors: valid files of each dtype, metadata, empty, and the tiny model's header
    # with its data cut off (a truncated file).
    write("safetensors", "f32", safetensors([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))]))
    write("safetensors", "mixed", safetensors(
        [("a", "BF16", [3], b"\x80\x3f" * 3), ("b", "F32", [1, 2], struct.pack("<2f", 7, -1)),
         ("c", "F16", [0, 4], b""), ("d", "F16", [1], b"\x00\x3c")], {"format": "pt"}))
    write("safetensors", "unsupported_dtype", safetensors([("i", "I32", [1], b"\0\0\0\0")]))
    write("safetensors", "empty", safetensors([]))
    write("safetensors", "scalar", safetensors([("s", "F32", [], struct.pack("<f", 0.5))], pad=False))
    tiny = read("models/tiny-diffusion/model.safetensors")
    (hlen,) = struct.unpack("<Q", tiny[:8])
    write("safetensors", "tiny_header_only", tiny[:8 + min(hlen, 3000)])

    # config.json
    for m in ("tiny-diffusion", "tiny-ar"):
        write("config", m, read(f"models/{m}/config.json"))
    write("config", "minimal", '{"model_type":"llada2_moe","vocab_size":8,"hidden_size":4,'
          '"num_hidden_layers":1,"num_attention_heads":1,"intermediate_size":8}')

    # Encode: first byte picks the tokenizer variant (0 = tiny).
    strings = json.loads(read("tests/tokenizer/data/test_strings.json"))
    for i, s in enumerate(strings[:40]):
        write("tokenizer_encode", f"s{i:02d}", bytes([i % 6]) + s.encode())
    write("tokenizer_encode", "special", b"\0<|startoftext|>hi<|mask|><|endoftext|><role>HUMAN</role>")
    write("tokenizer_encode", "invalid_utf8", b"\0ab\xff\xfe\xc3(\xe2\x82 \xf0\x9f\x98")

    # tokenizer.json: tools/data/tiny_tokenizer (the base of the tokenizer tests' variants)
    # with each variant applied, then cut to the first 300 vocabulary entries and the merges
    # that stay inside them; added tokens renumbered from 300 and the post-processor's ids
    # with them. Some carry tokenizer_config.json after a "#config" line.
    base = json.loads(read("tools/data/tiny_tokenizer/tokenizer.json"))
    config = read("tools/data/tiny_tokenizer/tokenizer_config.json").decode()

    def apply_variant(t, variant):  # as ApplyVariant in tests/tokenizer/tokenizer_test_util.h
        for key, value in variant.items():
            if key == "description":
                continue
            if key == "merges_as_strings":
                if value:
                    t["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                            for m in t["model"]["merges"]]
            elif key == "added_tokens_extra":
                t["added_tokens"] += value
            elif key == "model":
                t["model"].update(value)
            else:
                t[key] = value
        return t

    def shrink(t):
        vocab = {k: v for k, v in t["model"]["vocab"].items() if v < 300}
        def pair(m):
            return m.split(" ", 1) if isinstance(m, str) else m
        t["model"]["merges"] = [m for m in t["model"]["merges"]
                                if all(p in vocab for p in pair(m)) and "".join(pair(m)) in vocab][:40]
        t["model"]["vocab"] = vocab
        new_id = {}
        for i, a in enumerate(t["added_tokens"]):
            new_id[a["id"]] = 300 + i
            a["id"] = 300 + i
        pp = t.get("post_processor") or {}
        for entry in (pp.get("special_tokens") or {}).values():
            entry["ids"] = [new_id.get(i, i) for i in entry["ids"]]
        return t

    write("tokenizer_json", "tiny_small", json.dumps(shrink(json.loads(json.dumps(base)))))
    write("tokenizer_json", "tiny_small_config",
          json.dumps(shrink(json.loads(json.dumps(base)))) + "\n#config\n" + config)
    vdir = "tests/tokenizer/data/variants"
    for name in sorted(os.listdir(os.path.join(ROOT, vdir))):
        t = apply_variant(json.loads(json.dumps(base)), json.loads(read(f"{vdir}/{name}")))
        write("tokenizer_json", name.replace(".json", ""), json.dumps(shrink(t)))

    # Stop strings / chat template: FuzzedDataProvider inputs; any bytes are valid.
    write("stop_strings", "a", b"\x01\x02\x05hello\x03 wo\x10the end of the text\x00" + bytes(range(1, 64)))
    write("stop_strings", "b", b"\x00\x01\x02\n\n\x08<|endoftext|>" + b"\x00\x0b\x00\x0c\x01\x0d" * 20)
    write("chat_template", "a", b"\x01\x00\x0fbe brief\x01\x05hello\x02\x20<think>x</think>answer\x03\x04tool")
    write("chat_template", "b", b"\x00\x01\x40<tool_response>r</tool_response>\xfa\x05robot\x02hi")

    # OpenAI request bodies: first byte 0 = /v1/completions, 1 = /v1/chat/completions.
    completions = [
        '{"prompt": "Once upon"}', '{"prompt": [1, 2, 3]}', '{"prompt": ["text"]}',
        '{"prompt": [[4, 5]]}',
        '{"model": "tiny", "prompt": "x", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9, '
        '"seed": 7, "stop": ["END", "\\n"], "stream": true, "logprobs": 0, '
        '"stream_options": {"include_usage": true}, "stop_token_ids": [2757]}',
        '{"prompt": "x", "edit_threshold": 0.5, "editing": true, "block_length": 16, "steps": 4}',
        '{"prompt": "x", "logprobs": 3}', '{"prompt": "x", "n": 2}',
    ]
    chats = [
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"model": "tiny", "messages": [{"role": "system", "content": "be brief"}, '
        '{"role": "user", "content": [{"type": "text", "text": "hi"}]}], '
        '"max_completion_tokens": 12, "temperature": 0.5, "top_k": 20, "threshold": 0.8, '
        '"stop": "END", "stream": true, "logprobs": true, "top_logprobs": 0}',
        '{"messages": [{"role": "tool", "content": "r"}, {"role": "assistant", "content": null}]}',
    ]
    for i, b in enumerate(completions):
        write("openai_request", f"completions{i}", b"\0" + b.encode())
    for i, b in enumerate(chats):
        write("openai_request", f"chat{i}", b"\1" + b.encode())

    # Canary split text (dmoe-router --split, RouterAdmin.SetSplit).
    for i, text in enumerate(["v1=100", "v1=90,v2=10", " v1 = 50 , v2 = 25 , v3 = 25 ", "a=0,b=100"]):
        write("canary_split", f"split{i}", text)

    # API keys files: NAME ROLE SHA256HEX [limits], comments and blank lines.
    h1, h2 = "1211a6e49f450f7613a042134c89caf197a7ee139fcab073a0157a02b40b33c3", "11" * 32
    write("api_keys", "two", f"# NAME ROLE SHA256HEX limits\nacme user {h1} rps=20 streams=8 tpm=200000\n"
          f"\nops admin {h2}\n")
    write("api_keys", "one", f"t user {h1}  # trailing comment\n")

    # Protobuf requests, encoded from text format with protoc.
    def encode(message, proto, text):
        return subprocess.run(
            ["protoc", "--proto_path=" + ROOT, "--encode=" + message, proto],
            input=text.encode(), check=True, capture_output=True).stdout

    step = """segments { sequence_id: "s0" start: 0 tokens: [1, 2, 3, 2758, 2758] persist: 3
                 attention_block: 32 logits_from: 3 sampling { temperature: 0 } stream: 1 }"""
    write("attention_step", "one", encode("dmoe.v1.StepRequest", "proto/dmoe/v1/attention.proto", step))
    two = step + """ segments { sequence_id: "s1" start: 0 tokens: [5, 6, 2758] persist: 0
                 attention_block: 1 logits_from: 0 sampling { temperature: 0.7 top_k: 5 top_p: 0.9 seed: 3 }
                 reset_cache: true } step: 4 placement_version: 1"""
    write("attention_step", "two", encode("dmoe.v1.StepRequest", "proto/dmoe/v1/attention.proto", two))

    hidden = struct.pack("<256f", *[0.01 * i for i in range(256)])  # 2 rows x hidden 128
    ids = struct.pack("<2i", 3, 15)

    def bytes_lit(b):
        return "".join("\\x%02x" % c for c in b)

    run = f"""request_id: "r" step: 1 layer: 1
      hidden {{ dtype: DTYPE_F32 shape: [2, 128] data: "{bytes_lit(hidden)}" }}
      expert_ids {{ dtype: DTYPE_I32 shape: [2] data: "{bytes_lit(ids)}" }}"""
    write("expert_request", "two_rows", encode("dmoe.v1.RunExpertsRequest", "proto/dmoe/v1/expert.proto", run))
    empty = """layer: 3 hidden { dtype: DTYPE_F32 shape: [0, 128] } expert_ids { dtype: DTYPE_I32 shape: [0] }"""
    write("expert_request", "empty", encode("dmoe.v1.RunExpertsRequest", "proto/dmoe/v1/expert.proto", empty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
