"""Synchronous and asyncio clients of the Generation API (proto/dmoe/v1/generation.proto).

Every decoding knob left as None takes the server's default, the same as `dmoe generate`'s.
"""
import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import (AsyncIterator, Dict, Iterator, List, Optional, Sequence, Tuple, Union)

import grpc

from dmoe.errors import DmoeError, from_rpc_error
from dmoe.v1 import generation_pb2 as pb
from dmoe.v1 import generation_pb2_grpc as pb_grpc

Chat = Union[str, Sequence[Dict[str, str]]]
# One stop string or several (OpenAI's `stop`).
Stop = Union[str, Sequence[str]]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability when it was committed (``logprobs=True``).

    ``token`` is the token's raw bytes (byte-level decoded, possibly part of a UTF-8
    character); empty for special tokens and for servers without a tokenizer."""
    id: int
    logprob: float
    token: bytes = b""


@dataclass
class Result:
    """A finished generation."""
    ids: List[int]
    text: str
    forwards: int
    tokens_per_forward: float
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int = 0
    request_id: str = ""
    seconds: float = 0.0
    # With logprobs=True: one entry per id of `ids`; else empty.
    logprobs: List[TokenLogprob] = field(default_factory=list)
    # The stop string that ended the output (finish_reason "stop"); "" otherwise.
    matched_stop: str = ""
    # Token editing: tokens the model rewrote (re-masks included) and, of those, re-masks.
    edits: int = 0
    remasks: int = 0


@dataclass
class Chunk:
    """One committed block of a stream: its ids, the text they complete and their offset."""
    ids: List[int]
    text: str
    offset: int = 0
    final: Optional[Result] = None  # set on the last chunk only (statistics, held-back text)
    # With logprobs=True: one entry per id of `ids`.
    logprobs: List[TokenLogprob] = field(default_factory=list)


@dataclass
class ModelInfo:
    name: str
    version: str
    vocab_size: int
    max_position_embeddings: int
    block_length: int
    mask_id: int
    stop_ids: List[int] = field(default_factory=list)


_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


_EDITING = ("off", "speed", "quality")


def _request(prompt: Optional[str], chat: Optional[Chat], prompt_ids: Optional[Sequence[int]],
             model: Optional[str] = None, max_new_tokens: Optional[int] = None,
             threshold: Optional[float] = None, block_length: Optional[int] = None,
             steps: Optional[int] = None, temperature: Optional[float] = None,
             top_p: Optional[float] = None, top_k: Optional[int] = None,
             seed: Optional[int] = None, stop_ids: Optional[Sequence[int]] = None,
             request_id: Optional[str] = None, stop: Optional[Stop] = None,
             logprobs: bool = False, editing: Optional[str] = None,
             edit_threshold: Optional[float] = None,
             max_post_steps: Optional[int] = None) -> pb.GenerateRequest:
    given = sum(x is not None for x in (prompt, chat, prompt_ids))
    if given != 1:
        raise ValueError("give exactly one of prompt, chat or prompt_ids")
    request = pb.GenerateRequest()
    if prompt is not None:
        request.text = prompt
    elif chat is not None:
        messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
        for m in messages:
            request.chat.messages.add(role=m["role"], content=m["content"])
    else:
        request.prompt_ids.ids.extend(prompt_ids)
    if model:
        request.model.name = model
    p = request.params
    for name, value in (("max_new_tokens", max_new_tokens), ("threshold", threshold),
                        ("block_length", block_length), ("steps", steps),
                        ("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                        ("seed", seed), ("edit_threshold", edit_threshold),
                        ("max_post_steps", max_post_steps)):
        if value is not None:
            setattr(p, name, value)
    if stop_ids is not None:
        p.stop_ids.SetInParent()  # present and empty: only the length limit stops
        p.stop_ids.ids.extend(stop_ids)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(x, str) for x in stops):
            raise TypeError("stop must be a string or a sequence of strings")
        p.stop.extend(stops)  # the server checks the limits (<= 16, each 1 to 256 bytes)
    if logprobs:
        p.logprobs = True
    if editing is not None:
        if editing not in _EDITING:
            raise ValueError(f"editing must be one of {', '.join(_EDITING)}, got {editing!r}")
        p.editing = editing
    if request_id:
        request.request_id = request_id
    return request


def _logprobs(entries) -> List[TokenLogprob]:
    return [TokenLogprob(id=e.id, logprob=e.logprob, token=bytes(e.token)) for e in entries]


def _result(response_ids, text: str, stats, request_id: str,
            logprobs: List[TokenLogprob]) -> Result:
    return Result(ids=list(response_ids), text=text, forwards=stats.forwards,
                  tokens_per_forward=stats.tokens_per_forward,
                  finish_reason=_FINISH.get(stats.finish_reason, "stop"),
                  prompt_tokens=stats.prompt_tokens, request_id=request_id,
                  seconds=stats.seconds, logprobs=logprobs, matched_stop=stats.matched_stop,
                  edits=stats.edits, remasks=stats.remasks)


def _model_info(m) -> ModelInfo:
    return ModelInfo(name=m.name, version=m.version, vocab_size=m.vocab_size,
                     max_position_embeddings=m.max_position_embeddings,
                     block_length=m.block_length, mask_id=m.mask_id, stop_ids=list(m.stop_ids))


class _ChunkAssembler:
    """Stream events to Chunks (canvas events are skipped); the final chunk carries the
    whole Result, so it keeps the ids and text seen so far."""

    def __init__(self):
        self._ids: List[int] = []
        self._text = ""
        self._logprobs: List[TokenLogprob] = []

    @property
    def received(self) -> int:
        """Ids received so far: a retry asks the server to resume from here."""
        return len(self._ids)

    def add(self, event) -> Optional[Chunk]:
        kind = event.WhichOneof("event")
        if kind == "block":
            ids = list(event.block.ids)
            logprobs = _logprobs(event.block.logprobs)
            # After a retry the server resumes at resume_from_offset; drop anything it resends.
            skip = max(0, len(self._ids) - event.block.offset)
            if skip >= len(ids) and ids:
                return None
            ids, logprobs = ids[skip:], logprobs[skip:]
            self._ids.extend(ids)
            self._text += event.block.text
            self._logprobs.extend(logprobs)
            return Chunk(ids=ids, text=event.block.text,
                         offset=event.block.offset + skip, logprobs=logprobs)
        if kind == "final":
            self._text += event.final.text
            return Chunk(ids=[], text=event.final.text, offset=len(self._ids),
                         final=_result(self._ids, self._text, event.final.stats,
                                       event.request_id, list(self._logprobs)))
        return None


def _channel_args(target: str, tls_ca: Optional[str], aio: bool):
    module = grpc.aio if aio else grpc
    if tls_ca is None:
        return module.insecure_channel(target)
    with open(tls_ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return module.secure_channel(target, credentials)


class _Common:
    def __init__(self, target: str, api_key: Optional[str], timeout: Optional[float]):
        self._target = target
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ())
        self._timeout = timeout

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return timeout if timeout is not None else self._timeout


def _retry_schedule(targets: int, retry_timeout: float, request):
    """(target index, seconds to wait first) of each try of one call, Client's and
    AsyncClient's: every target in turn, then again after a backoff (0.1 s doubling to 2 s)
    until retry_timeout; one try when it is 0. Gives `request` an id when retries are on, so
    a journalling scheduler re-attaches instead of starting the request again."""
    if retry_timeout > 0 and not request.request_id:
        request.request_id = uuid.uuid4().hex
    give_up = time.monotonic() + retry_timeout
    backoff, wait = 0.1, 0.0
    for attempt in itertools.count():
        yield attempt % targets, wait
        wait = 0.0
        if retry_timeout <= 0 or time.monotonic() >= give_up:
            return
        if attempt + 1 >= targets:  # every target tried once: wait a little
            wait = min(backoff, max(0.0, give_up - time.monotonic()))
            backoff = min(backoff * 2, 2.0)


class Client(_Common):
    """Blocking client; thread-safe (one channel per target, any number of concurrent calls).

    Args:
        target: "host:port" of any Generation API server (router, scheduler, dmoe serve).
        api_key: sent as "authorization: Bearer KEY" metadata.
        tls_ca: path of a PEM CA bundle: connect with TLS, verifying the server against it.
        timeout: default deadline of every call, in seconds (None: none).
        fallback_targets: further servers (other routers) that retries go to, round robin.
        retry_timeout: seconds during which a generate or stream that fails with UNAVAILABLE
            (a dead router, a restarting scheduler) is sent again, with the same request id (one
            is made up when none is given) and, for streams, resume_from_offset = the ids
            already yielded, so no chunk repeats. Re-attaching needs a scheduler with
            --journal; without one the retry runs the request again (the same ids: decoding
            is deterministic). 0 (the default): no retries.
    """

    def __init__(self, target: str, api_key: Optional[str] = None, tls_ca: Optional[str] = None,
                 timeout: Optional[float] = None, fallback_targets: Sequence[str] = (),
                 retry_timeout: float = 0):
        super().__init__(target, api_key, timeout)
        self._channels = [_channel_args(t, tls_ca, aio=False)
                          for t in [target, *fallback_targets]]
        self._stubs = [pb_grpc.GenerationStub(c) for c in self._channels]
        self._channel = self._channels[0]
        self._stub = self._stubs[0]
        self._retry_timeout = retry_timeout

    def close(self) -> None:
        """Closes the channels; calls in flight are cancelled."""
        for channel in self._channels:
            channel.close()

    def _tries(self, request):
        """Stubs to send `request` to, in turn, while retries last (it gets a request id)."""
        for index, wait in _retry_schedule(len(self._stubs), self._retry_timeout, request):
            if wait > 0:
                time.sleep(wait)
            yield self._stubs[index]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompt: Optional[str] = None, chat: Optional[Chat] = None,
                 prompt_ids: Optional[Sequence[int]] = None, *, model: Optional[str] = None,
                 max_new_tokens: Optional[int] = None, threshold: Optional[float] = None,
                 block_length: Optional[int] = None, steps: Optional[int] = None,
                 temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, seed: Optional[int] = None,
                 stop_ids: Optional[Sequence[int]] = None, stop: Optional[Stop] = None,
                 logprobs: bool = False, editing: Optional[str] = None,
                 edit_threshold: Optional[float] = None, max_post_steps: Optional[int] = None,
                 request_id: Optional[str] = None, timeout: Optional[float] = None) -> Result:
        """Generates for one prompt (raw text, a chat message or messages, or token ids).

        Decoding knobs left as None take the server's default. ``stop``: a string or up to 16
        strings; the output ends right before the first match (not returned), finish_reason
        "stop", ``Result.matched_stop`` names it. ``logprobs=True``: ``Result.logprobs`` holds
        one TokenLogprob per id. ``editing``: LLaDA2.1 token editing preset ("off", "speed",
        "quality"), ``edit_threshold`` and ``max_post_steps`` override it.
        """
        request = _request(prompt, chat, prompt_ids, model=model,
                           max_new_tokens=max_new_tokens, threshold=threshold,
                           block_length=block_length, steps=steps, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed, stop_ids=stop_ids,
                           request_id=request_id, stop=stop, logprobs=logprobs,
                           editing=editing, edit_threshold=edit_threshold,
                           max_post_steps=max_post_steps)
        error = None
        for stub in self._tries(request):
            try:
                r = stub.Generate(request, timeout=self._deadline(timeout),
                                  metadata=self._metadata)
                return _result(r.ids, r.text, r.stats, r.request_id, _logprobs(r.logprobs))
            except grpc.RpcError as e:
                error = e
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
        raise from_rpc_error(error) from None

    def stream(self, prompt: Optional[str] = None, chat: Optional[Chat] = None,
               prompt_ids: Optional[Sequence[int]] = None, *, model: Optional[str] = None,
               max_new_tokens: Optional[int] = None, threshold: Optional[float] = None,
               block_length: Optional[int] = None, steps: Optional[int] = None,
               temperature: Optional[float] = None, top_p: Optional[float] = None,
               top_k: Optional[int] = None, seed: Optional[int] = None,
               stop_ids: Optional[Sequence[int]] = None, stop: Optional[Stop] = None,
               logprobs: bool = False, editing: Optional[str] = None,
               edit_threshold: Optional[float] = None, max_post_steps: Optional[int] = None,
               request_id: Optional[str] = None,
               timeout: Optional[float] = None) -> Iterator[Chunk]:
        """Yields one Chunk per committed block; the last one carries ``final`` (a Result).

        The arguments are generate's; with ``logprobs=True`` each chunk carries the logprobs of
        its ids. With ``stop``, text that might start a match is held back until it cannot
        (the final chunk's text has the rest).

        Leaving the loop early (break, an exception) cancels the request on the server.
        """
        request = _request(prompt, chat, prompt_ids, model=model,
                           max_new_tokens=max_new_tokens, threshold=threshold,
                           block_length=block_length, steps=steps, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed, stop_ids=stop_ids,
                           request_id=request_id, stop=stop, logprobs=logprobs,
                           editing=editing, edit_threshold=edit_threshold,
                           max_post_steps=max_post_steps)
        chunks = _ChunkAssembler()
        error = None
        for stub in self._tries(request):
            request.resume_from_offset = chunks.received
            call = stub.GenerateStream(request, timeout=self._deadline(timeout),
                                       metadata=self._metadata)
            try:
                for event in call:
                    chunk = chunks.add(event)
                    if chunk is not None:
                        yield chunk
                    if chunk is not None and chunk.final is not None:
                        return
                return
            except grpc.RpcError as e:
                error = e
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
            finally:
                call.cancel()  # a no-op after the end; frees the request's KV when left early
        raise from_rpc_error(error) from None

    def models(self, timeout: Optional[float] = None) -> List[ModelInfo]:
        """The models this server serves."""
        try:
            r = self._stub.ListModels(pb.ListModelsRequest(), timeout=self._deadline(timeout),
                                      metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_model_info(m) for m in r.models]

    def tokenize(self, text: Optional[str] = None, chat: Optional[Chat] = None,
                 timeout: Optional[float] = None) -> List[int]:
        """Token ids of a text, or of chat messages rendered with the model's template."""
        request = pb.TokenizeRequest()
        if (text is None) == (chat is None):
            raise ValueError("give exactly one of text or chat")
        if text is not None:
            request.text = text
        else:
            messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
            for m in messages:
                request.chat.messages.add(role=m["role"], content=m["content"])
        try:
            r = self._stub.Tokenize(request, timeout=self._deadline(timeout),
                                    metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return list(r.ids)


class AsyncClient(_Common):
    """The same calls for asyncio: ``await client.generate(...)``, ``async for c in
    client.stream(...)``. Create it inside the event loop that uses it. ``fallback_targets``
    and ``retry_timeout`` retry as Client's do (the waits are ``asyncio.sleep``)."""

    def __init__(self, target: str, api_key: Optional[str] = None, tls_ca: Optional[str] = None,
                 timeout: Optional[float] = None, fallback_targets: Sequence[str] = (),
                 retry_timeout: float = 0):
        super().__init__(target, api_key, timeout)
        self._channels = [_channel_args(t, tls_ca, aio=True) for t in [target, *fallback_targets]]
        self._stubs = [pb_grpc.GenerationStub(c) for c in self._channels]
        self._channel = self._channels[0]
        self._stub = self._stubs[0]
        self._retry_timeout = retry_timeout

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def _tries(self, request):
        for index, wait in _retry_schedule(len(self._stubs), self._retry_timeout, request):
            if wait > 0:
                await asyncio.sleep(wait)
            yield self._stubs[index]

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def generate(self, prompt: Optional[str] = None, chat: Optional[Chat] = None,
                       prompt_ids: Optional[Sequence[int]] = None, *,
                       timeout: Optional[float] = None, **knobs) -> Result:
        """As Client.generate; the decoding knobs are the same keyword arguments."""
        request = _request(prompt, chat, prompt_ids, **_knobs(knobs))
        error = None
        async for stub in self._tries(request):
            try:
                r = await stub.Generate(request, timeout=self._deadline(timeout),
                                        metadata=self._metadata)
                return _result(r.ids, r.text, r.stats, r.request_id, _logprobs(r.logprobs))
            except grpc.RpcError as e:
                error = e
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
        raise from_rpc_error(error) from None

    async def stream(self, prompt: Optional[str] = None, chat: Optional[Chat] = None,
                     prompt_ids: Optional[Sequence[int]] = None, *,
                     timeout: Optional[float] = None, **knobs) -> AsyncIterator[Chunk]:
        """As Client.stream, as an async iterator; leaving it early cancels the request."""
        request = _request(prompt, chat, prompt_ids, **_knobs(knobs))
        chunks = _ChunkAssembler()
        error = None
        async for stub in self._tries(request):
            request.resume_from_offset = chunks.received
            call = stub.GenerateStream(request, timeout=self._deadline(timeout),
                                       metadata=self._metadata)
            try:
                async for event in call:
                    chunk = chunks.add(event)
                    if chunk is not None:
                        yield chunk
                    if chunk is not None and chunk.final is not None:
                        return
                return
            except grpc.RpcError as e:
                error = e
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
            finally:
                call.cancel()
        raise from_rpc_error(error) from None

    async def models(self, timeout: Optional[float] = None) -> List[ModelInfo]:
        try:
            r = await self._stub.ListModels(pb.ListModelsRequest(),
                                            timeout=self._deadline(timeout),
                                            metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_model_info(m) for m in r.models]


_KNOBS = ("model", "max_new_tokens", "threshold", "block_length", "steps", "temperature",
          "top_p", "top_k", "seed", "stop_ids", "request_id", "stop", "logprobs", "editing",
          "edit_threshold", "max_post_steps")


def _knobs(knobs: dict) -> dict:
    unknown = set(knobs) - set(_KNOBS)
    if unknown:
        raise TypeError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    return knobs


__all__ = ["AsyncClient", "Chunk", "Client", "DmoeError", "ModelInfo", "Result", "TokenLogprob"]
