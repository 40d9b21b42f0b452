#!/usr/bin/env bash
# The installed C++ SDK as a user gets it: `cmake --install --component client` into a temp
# prefix, examples/cpp-client configured and built OUT OF TREE against it with
# find_package(dmoe CONFIG), then run against a real `dmoe serve`; its text must equal the
# gRPC API's (`dmoe client generate --json`) for the same request.
# Usage: cpp_sdk_install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 source=$2
tmp=$(mktemp -d /tmp/dmoe-sdk-test.XXXXXX)
serve_pid=""
cleanup() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

cmake --install "$build" --prefix "$tmp/prefix" --component client >/dev/null
cmake -S "$source/examples/cpp-client" -B "$tmp/example" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/example" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }

"$build/bin/dmoe" serve --model "$source/models/tiny-diffusion" --listen 127.0.0.1:0 \
  --threads 2 >"$tmp/serve.log" 2>&1 &
serve_pid=$!
address=""
for _ in $(seq 1 600); do
  address=$(sed -n 's/^listening on \([0-9.]*:[0-9]*\).*/\1/p' "$tmp/serve.log" | head -n1)
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "dmoe serve did not start"; cat "$tmp/serve.log"; exit 1; }

out=$("$tmp/example/dmoe-cpp-client" "$address" "Once upon a time")
expected=$("$build/bin/dmoe" client generate --server "$address" --prompt "Once upon a time" \
  --max-new-tokens 32 --json | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["text"])')
echo "example printed: $out"
[ "$(printf '%s\n' "$out" | head -n -1)" = "$expected" ] || { echo "expected text: $expected"; exit 1; }
printf '%s\n' "$out" | tail -n1 | grep -q '^forwards [1-9]' || { echo "no forwards line"; exit 1; }
echo "ok: the installed SDK's example gives the gRPC API's text"
