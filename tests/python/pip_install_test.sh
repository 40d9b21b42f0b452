#!/bin/sh
# `pip install` of the built Python SDK tree (build/python: the SDK's modules, the generated
# stubs, pyproject.toml): the installed package imports on its own, stubs included. Offline:
# no build isolation, no dependencies (Debian's python3-grpcio/python3-protobuf are used).
# Usage: pip_install_test.sh BUILT_TREE
set -eu
tree=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$tree" "$work/src"  # pip builds in tree: keep build/python clean
/usr/bin/python3 -m pip install --quiet --no-build-isolation --no-deps --no-index \
  --root-user-action=ignore --disable-pip-version-check \
  --target "$work/site" "$work/src"
cd "$work"
PYTHONPATH="$work/site" PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 - "$work/site" <<'PY'
import os, sys
import dmoe
from dmoe.v1 import generation_pb2
assert dmoe.__file__.startswith(sys.argv[1]), dmoe.__file__
assert generation_pb2.__file__.startswith(sys.argv[1]), generation_pb2.__file__
assert "logprobs" in generation_pb2.DecodingParams.DESCRIPTOR.fields_by_name
print("installed", dmoe.__file__, dmoe.TokenLogprob.__name__)
PY
ls "$work/site" | grep -q '^dmoe-0.1.0.dist-info$'
echo "pip install OK"
