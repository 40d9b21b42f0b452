"""The part of the `safetensors` package that chatllm.cpp's convert.py uses (safe_open with
framework="pt"), for scripts/bench-peer: Debian 12 packages torch but not safetensors, and this
machine has no PyPI. Reads the documented format: an 8-byte little-endian header length, a JSON
header {name: {dtype, shape, data_offsets}} and the data."""
import json
import struct

import torch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I8": torch.int8, "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8}


class _File:
    def __init__(self, path):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            self._data = f.read()
        header.pop("__metadata__", None)
        self._header = header

    def keys(self):
        return list(self._header.keys())

    def get_tensor(self, name):
        entry = self._header[name]
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        raw = bytearray(self._data[begin:end])  # writable: torch.frombuffer warns otherwise
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(entry["shape"]).clone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def safe_open(path, framework="pt", device="cpu"):
    if framework != "pt" or device != "cpu":
        raise ValueError("this shim reads framework='pt' on the CPU only")
    return _File(path)
