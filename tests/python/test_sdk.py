"""The Python SDK (clients/python) against a real `dmoe serve` on the committed tiny model:
sync and asyncio clients give the ids of `dmoe generate`, streams concatenate to the unary
result, errors are typed, leaving a stream early cancels it."""
import asyncio
import json
import os
import re
import subprocess
import time

import pytest

import dmoe

BIN = os.environ.get("DMOE_BIN_DIR", "build/bin")
MODEL = os.path.join(os.environ.get("DMOE_SOURCE_DIR", "."), "models", "tiny-diffusion")
CHAT = "Reverse the list:\nred\ncat\nmoon\nship"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([f"{BIN}/dmoe", "serve", "--model", MODEL, "--listen", "127.0.0.1:0",
                             "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    address = None
    deadline = time.time() + 60
    while time.time() < deadline and address is None:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.match(r"listening on (\S+)", line)
        if m:
            address = m.group(1)
    if address is None:
        proc.kill()
        pytest.fail("dmoe serve did not start")
    yield address
    proc.terminate()
    proc.wait(timeout=30)


def engine_ids(**flags):
    args = [f"{BIN}/dmoe", "generate", "--model", MODEL, "--json"]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def test_generate_equals_the_engine(server):
    expected = engine_ids(chat=CHAT, max_new_tokens=32)
    with dmoe.Client(server, timeout=60) as client:
        r = client.generate(chat=CHAT, max_new_tokens=32)
    assert r.ids == expected["ids"]
    assert r.text == expected["text"]
    assert r.forwards == expected["forwards"]
    assert r.finish_reason == expected["finish_reason"]
    assert r.tokens_per_forward > 0


def test_stream_concatenates_to_generate(server):
    with dmoe.Client(server, timeout=60) as client:
        unary = client.generate(prompt="Once upon a time", max_new_tokens=48)
        chunks = list(client.stream(prompt="Once upon a time", max_new_tokens=48))
    assert chunks[-1].final is not None
    assert [i for c in chunks for i in c.ids] == unary.ids
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].final.ids == unary.ids


def test_models_and_tokenize(server):
    with dmoe.Client(server) as client:
        models = client.models()
        assert models[0].name == "tiny-diffusion"
        assert models[0].block_length == 32
        ids = client.tokenize(text="hello world")
        assert ids and all(isinstance(i, int) for i in ids)
        assert client.tokenize(chat="hi") != client.tokenize(text="hi")  # the chat template


def test_errors_are_typed(server):
    with dmoe.Client(server) as client:
        with pytest.raises(dmoe.InvalidArgument) as e:
            client.generate(prompt="x", max_new_tokens=0)
        assert "max_new_tokens" in e.value.message
        with pytest.raises(dmoe.InvalidArgument):
            client.generate(prompt="x", model="other")
        with pytest.raises(ValueError):
            client.generate(prompt="x", chat="y")
    with dmoe.Client("127.0.0.1:1", timeout=2) as dead:
        with pytest.raises((dmoe.Unavailable, dmoe.DeadlineExceeded)):
            dead.generate(prompt="x")


def test_leaving_a_stream_early_cancels_it(server):
    with dmoe.Client(server, timeout=60) as client:
        stream = client.stream(prompt="Once upon a time", max_new_tokens=256, stop_ids=[])
        first = next(stream)
        assert first.ids
        stream.close()  # GeneratorExit: the call is cancelled
        # The server keeps serving.
        assert client.generate(prompt="Once", max_new_tokens=8).ids


def test_async_client(server):
    expected = engine_ids(chat=CHAT, max_new_tokens=32)

    async def run():
        async with dmoe.AsyncClient(server, timeout=60) as client:
            r = await client.generate(chat=CHAT, max_new_tokens=32)
            chunks = [c async for c in client.stream(chat=CHAT, max_new_tokens=32)]
            both = await asyncio.gather(client.generate(prompt="Once", max_new_tokens=16),
                                        client.generate(prompt="Once", max_new_tokens=16))
            models = await client.models()
            return r, chunks, both, models

    r, chunks, both, models = asyncio.run(run())
    assert r.ids == expected["ids"]
    assert [i for c in chunks for i in c.ids] == expected["ids"]
    assert both[0].ids == both[1].ids
    assert models[0].name == "tiny-diffusion"


def test_stop_string_cuts_the_text_before_it(server):
    with dmoe.Client(server, timeout=60) as client:
        full = client.generate(chat=CHAT, max_new_tokens=32)
        assert "moon" in full.text and full.matched_stop == ""
        r = client.generate(chat=CHAT, max_new_tokens=32, stop=["moon", "never-generated"])
        one = client.generate(chat=CHAT, max_new_tokens=32, stop="moon")  # a single string
    assert r.text == full.text[:full.text.index("moon")]
    assert r.finish_reason == "stop"
    assert r.matched_stop == "moon"
    assert r.ids == full.ids[:len(r.ids)]  # ids through the token completing the match
    assert (one.text, one.ids, one.matched_stop) == (r.text, r.ids, r.matched_stop)


def test_logprobs_one_per_id(server):
    with dmoe.Client(server, timeout=60) as client:
        plain = client.generate(chat=CHAT, max_new_tokens=32)
        r = client.generate(chat=CHAT, max_new_tokens=32, logprobs=True)
    assert plain.logprobs == []
    assert r.ids == plain.ids  # asking for logprobs does not change the decoding
    assert [lp.id for lp in r.logprobs] == r.ids
    assert all(isinstance(lp, dmoe.TokenLogprob) for lp in r.logprobs)
    assert all(lp.logprob <= 0 for lp in r.logprobs)
    assert all(isinstance(lp.token, bytes) for lp in r.logprobs)
    # The tokens' bytes spell the text (special tokens have none).
    assert b"".join(lp.token for lp in r.logprobs).decode() == r.text


def test_streamed_stop_and_logprobs_equal_unary(server):
    knobs = dict(chat=CHAT, max_new_tokens=32, stop=["moon"], logprobs=True)
    with dmoe.Client(server, timeout=60) as client:
        unary = client.generate(**knobs)
        chunks = list(client.stream(**knobs))
    final = chunks[-1].final
    assert final is not None
    assert [i for c in chunks for i in c.ids] == unary.ids
    assert "".join(c.text for c in chunks) == unary.text
    for c in chunks:
        assert [lp.id for lp in c.logprobs] == c.ids
    assert [lp for c in chunks for lp in c.logprobs] == unary.logprobs
    assert final.logprobs == unary.logprobs
    assert (final.finish_reason, final.matched_stop) == ("stop", "moon")


def test_editing_equals_the_engine(server):
    with dmoe.Client(server, timeout=60) as client:
        off = client.generate(chat=CHAT, max_new_tokens=32)
        quality = client.generate(chat=CHAT, max_new_tokens=32, editing="quality")
        tuned = client.generate(chat=CHAT, max_new_tokens=32, edit_threshold=0.5,
                                max_post_steps=4)
        with pytest.raises(ValueError):
            client.generate(chat=CHAT, editing="fast")
        with pytest.raises(dmoe.InvalidArgument) as e:
            client.generate(chat=CHAT, edit_threshold=2.0)
        assert "edit_threshold" in e.value.message
    assert (off.edits, off.remasks) == (0, 0)
    for r, flags in ((quality, dict(editing="quality")),
                     (tuned, dict(edit_threshold=0.5, max_post_steps=4))):
        expected = engine_ids(chat=CHAT, max_new_tokens=32, **flags)
        assert r.ids == expected["ids"]
        assert r.forwards == expected["forwards"]
        assert r.edits == expected["edits"]
        assert 0 <= r.remasks <= r.edits


def test_async_stop_logprobs_editing(server):
    async def run():
        async with dmoe.AsyncClient(server, timeout=60) as client:
            r = await client.generate(chat=CHAT, max_new_tokens=32, stop=["moon"], logprobs=True)
            chunks = [c async for c in client.stream(chat=CHAT, max_new_tokens=32,
                                                     stop=["moon"], logprobs=True)]
            edited = await client.generate(chat=CHAT, max_new_tokens=32, editing="quality",
                                           max_post_steps=4)
            with pytest.raises(TypeError):
                await client.generate(chat=CHAT, stops=["moon"])
            return r, chunks, edited

    r, chunks, edited = asyncio.run(run())
    assert (r.finish_reason, r.matched_stop) == ("stop", "moon")
    assert "moon" not in r.text
    assert [lp.id for lp in r.logprobs] == r.ids
    assert [lp for c in chunks for lp in c.logprobs] == r.logprobs
    assert chunks[-1].final.matched_stop == "moon"
    expected = engine_ids(chat=CHAT, max_new_tokens=32, editing="quality", max_post_steps=4)
    assert (edited.ids, edited.edits) == (expected["ids"], expected["edits"])


def test_a_dead_target_falls_back_to_the_next(server):
    expected = engine_ids(prompt="Once upon a time", max_new_tokens=32)
    # Nothing listens on port 1: every call goes on to the fallback target.
    with dmoe.Client("127.0.0.1:1", fallback_targets=[server], retry_timeout=20,
                     timeout=60) as client:
        assert client.generate(prompt="Once upon a time", max_new_tokens=32).ids == expected["ids"]
        chunks = list(client.stream(prompt="Once upon a time", max_new_tokens=32))
    assert [i for c in chunks for i in c.ids] == expected["ids"]
    with dmoe.Client("127.0.0.1:1", timeout=10) as client:  # no retries: the error
        with pytest.raises(dmoe.DmoeError):
            client.generate(prompt="x", max_new_tokens=4)


def _serve_on(port, journal):
    proc = subprocess.Popen([f"{BIN}/dmoe", "serve", "--model", MODEL, "--listen",
                             f"127.0.0.1:{port}", "--threads", "1", "--journal", journal],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on"):
            return proc
    proc.kill()
    pytest.fail("dmoe serve did not start")


def test_a_stream_survives_its_server_killed_and_restarted(tmp_path):
    import signal
    import socket
    # Threshold 1: one token per forward, and stop id 3 (never generated here) instead of EOS:
    # 512 forwards, so the stream is still running when the server dies.
    expected = engine_ids(prompt="Water boils at", max_new_tokens=512, threshold=1.0, stop_ids=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = str(tmp_path / "journal")
    proc = _serve_on(port, journal)
    try:
        with dmoe.Client(f"127.0.0.1:{port}", retry_timeout=60, timeout=120) as client:
            tries = []
            first_try = client._tries

            def counted(request):
                for stub in first_try(request):
                    tries.append(stub)
                    yield stub

            client._tries = counted
            ids, restarted = [], False
            for chunk in client.stream(prompt="Water boils at", max_new_tokens=512,
                                       threshold=1.0, stop_ids=[3], request_id="py-restart"):
                assert chunk.offset == len(ids) or not chunk.ids  # nothing repeated or skipped
                ids += chunk.ids
                if not restarted and ids:
                    # SIGKILL after the first block, then the same server on the same journal.
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    proc = _serve_on(port, journal)
                    restarted = True
        assert restarted
        assert len(tries) >= 2, "the stream never broke: the kill came after the last block"
        assert ids == expected["ids"]
    finally:
        proc.kill()
        proc.wait()


def test_async_a_dead_target_falls_back_to_the_next(server):
    expected = engine_ids(prompt="Once upon a time", max_new_tokens=32)

    async def run():
        async with dmoe.AsyncClient("127.0.0.1:1", fallback_targets=[server], retry_timeout=20,
                                    timeout=60) as client:
            r = await client.generate(prompt="Once upon a time", max_new_tokens=32)
            chunks = [c async for c in client.stream(prompt="Once upon a time",
                                                     max_new_tokens=32)]
        async with dmoe.AsyncClient("127.0.0.1:1", timeout=10) as client:  # no retries
            with pytest.raises(dmoe.DmoeError):
                await client.generate(prompt="x", max_new_tokens=4)
        return r, chunks

    r, chunks = asyncio.run(run())
    assert r.ids == expected["ids"]
    assert [i for c in chunks for i in c.ids] == expected["ids"]


def test_async_stream_survives_its_server_killed_and_restarted(tmp_path):
    import signal
    import socket
    expected = engine_ids(prompt="Water boils at", max_new_tokens=512, threshold=1.0, stop_ids=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = str(tmp_path / "journal")
    procs = [_serve_on(port, journal)]

    async def run():
        ids, restarted = [], False
        async with dmoe.AsyncClient(f"127.0.0.1:{port}", retry_timeout=60,
                                    timeout=120) as client:
            async for chunk in client.stream(prompt="Water boils at", max_new_tokens=512,
                                             threshold=1.0, stop_ids=[3]):
                assert chunk.offset == len(ids) or not chunk.ids  # nothing repeated or skipped
                ids += chunk.ids
                if not restarted and ids:  # SIGKILL after the first block, then a new server
                    procs[-1].send_signal(signal.SIGKILL)
                    procs[-1].wait()
                    procs.append(_serve_on(port, journal))
                    restarted = True
        return ids, restarted

    try:
        ids, restarted = asyncio.run(run())
        assert restarted
        assert ids == expected["ids"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
