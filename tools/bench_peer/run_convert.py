"""Runs chatllm.cpp's convert.py (argv[1]) with argv[2:] under Debian 12's torch 1.13, which
predates torch.compile (used there as a decorator only): it becomes the identity. The
safetensors shim next to this file must be on PYTHONPATH (scripts/bench-peer sets it)."""
import runpy
import sys

import torch

if not hasattr(torch, "compile"):
    def _no_compile(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn
    torch.compile = _no_compile

script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
