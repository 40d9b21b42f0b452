// Node.js client of dmoe's Generation API (proto/dmoe/v1/generation.proto) on @grpc/grpc-js.
// Every decoding option left out takes the server's default, the same as `dmoe generate`'s.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The proto next to this file (a packed copy) or the repository's.
const PROTO = [path.join(__dirname, 'generation.proto'),
               path.join(__dirname, '..', '..', 'proto', 'dmoe', 'v1', 'generation.proto')]
  .find((p) => fs.existsSync(p));
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const { Generation } = grpc.loadPackageDefinition(definition).dmoe.v1;

/** A failed call: `code` is the gRPC status code (number), `codeName` its name. */
class DmoeError extends Error {
  constructor(code, details) {
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === code) || 'UNKNOWN';
    super(`${codeName}: ${details}`);
    this.name = 'DmoeError';
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }
}

function toError(e) {
  return e && typeof e.code === 'number' ? new DmoeError(e.code, e.details || e.message) : e;
}

const FINISH = { FINISH_REASON_STOP: 'stop', FINISH_REASON_LENGTH: 'length' };
const EDITING = ['off', 'speed', 'quality'];

function buildRequest(o) {
  const given = ['prompt', 'chat', 'promptIds'].filter((k) => o[k] !== undefined);
  if (given.length !== 1) throw new TypeError('give exactly one of prompt, chat or promptIds');
  const request = { params: {} };
  if (o.prompt !== undefined) request.text = o.prompt;
  if (o.chat !== undefined) {
    const messages = typeof o.chat === 'string' ? [{ role: 'user', content: o.chat }] : o.chat;
    request.chat = { messages };
  }
  if (o.promptIds !== undefined) request.prompt_ids = { ids: o.promptIds };
  if (o.model) request.model = { name: o.model };
  if (o.requestId) request.request_id = o.requestId;
  const knobs = { maxNewTokens: 'max_new_tokens', threshold: 'threshold', blockLength: 'block_length',
                  steps: 'steps', temperature: 'temperature', topP: 'top_p', topK: 'top_k', seed: 'seed',
                  editThreshold: 'edit_threshold', maxPostSteps: 'max_post_steps' };
  for (const [js, field] of Object.entries(knobs)) {
    if (o[js] !== undefined && o[js] !== null) request.params[field] = o[js];
  }
  if (o.stopIds !== undefined) request.params.stop_ids = { ids: o.stopIds };
  if (o.stop !== undefined && o.stop !== null) {
    const stop = typeof o.stop === 'string' ? [o.stop] : o.stop;
    if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string')) {
      throw new TypeError('stop must be a string or an array of strings');
    }
    request.params.stop = stop;  // the server checks the limits (<= 16, each 1 to 256 bytes)
  }
  if (o.logprobs) request.params.logprobs = true;
  if (o.editing !== undefined && o.editing !== null) {
    if (!EDITING.includes(o.editing)) {
      throw new TypeError(`editing must be one of ${EDITING.join(', ')}, got ${JSON.stringify(o.editing)}`);
    }
    request.params.editing = o.editing;
  }
  return request;
}

/** [{id, logprob, token}] of a response's or block's TokenLogprob entries (token: a Buffer). */
function toLogprobs(entries) {
  return (entries || []).map((e) => ({ id: e.id, logprob: e.logprob, token: Buffer.from(e.token || []) }));
}

function toResult(ids, text, stats, requestId, logprobs) {
  return {
    ids, text, requestId,
    forwards: stats.forwards,
    tokensPerForward: stats.tokens_per_forward,
    finishReason: FINISH[stats.finish_reason] || 'stop',
    promptTokens: stats.prompt_tokens,
    seconds: stats.seconds,
    logprobs,
    matchedStop: stats.matched_stop,
    edits: stats.edits,
    remasks: stats.remasks,
  };
}

class Client {
  /**
   * @param {string} target "host:port" of any Generation API server (router, scheduler, dmoe serve)
   * @param {{apiKey?: string, tlsCa?: string|Buffer, timeout?: number,
   *          fallbackTargets?: string[], retryTimeout?: number}} options timeout in seconds.
   *   retryTimeout (seconds, 0: none): a generate or stream failing with UNAVAILABLE (a dead
   *   router, a restarting scheduler) is sent again, round robin over target and
   *   fallbackTargets with backoff, with the same request id (made up when none is given) and,
   *   for streams, resume_from_offset = the ids already yielded (no chunk twice, none missing).
   *   Re-attaching needs a scheduler with --journal; without one the retry runs the request
   *   again (the same ids: decoding is deterministic).
   */
  constructor(target, { apiKey, tlsCa, timeout, fallbackTargets = [], retryTimeout = 0 } = {}) {
    const credentials = tlsCa
      ? grpc.credentials.createSsl(Buffer.isBuffer(tlsCa) ? tlsCa : fs.readFileSync(tlsCa))
      : grpc.credentials.createInsecure();
    this._target = target;
    this._stubs = [target, ...fallbackTargets].map((t) => new Generation(t, credentials));
    this._stub = this._stubs[0];
    this._apiKey = apiKey;
    this._timeout = timeout;
    this._retryTimeout = retryTimeout;
  }

  // The stubs to send `request` to, in turn, while retries last; gives it a request id.
  async *_tries(request) {
    if (this._retryTimeout > 0 && !request.request_id) {
      request.request_id = crypto.randomUUID().replace(/-/g, '');
    }
    const giveUp = Date.now() + this._retryTimeout * 1000;
    let backoff = 100;
    for (let attempt = 0; ; ++attempt) {
      yield this._stubs[attempt % this._stubs.length];
      if (this._retryTimeout <= 0 || Date.now() >= giveUp) return;
      if (attempt + 1 >= this._stubs.length) {  // every target tried once: wait a little
        await new Promise((r) => setTimeout(r, Math.min(backoff, Math.max(0, giveUp - Date.now()))));
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  _metadata() {
    const m = new grpc.Metadata();
    if (this._apiKey) m.set('authorization', `Bearer ${this._apiKey}`);
    return m;
  }

  _options(timeout) {
    const t = timeout !== undefined ? timeout : this._timeout;
    return t ? { deadline: new Date(Date.now() + t * 1000) } : {};
  }

  /**
   * Generates for one prompt; resolves to {ids, text, forwards, tokensPerForward, finishReason,
   * logprobs, matchedStop, edits, remasks, ...}. `stop` (a string or up to 16): the output ends
   * right before the first match, finishReason 'stop', matchedStop names it. `logprobs: true`:
   * one {id, logprob, token} per id.
   */
  generate(options = {}) {
    let request;
    try {
      request = buildRequest(options);
    } catch (e) {
      return Promise.reject(e);  // bad options reject like failed calls
    }
    const once = (stub) => new Promise((resolve, reject) => {
      const call = stub.Generate(request, this._metadata(), this._options(options.timeout),
        (err, r) => {
          if (err) return reject(err);
          resolve(toResult(r.ids, r.text, r.stats, r.request_id, toLogprobs(r.logprobs)));
        });
      if (options.signal) {
        if (options.signal.aborted) call.cancel();
        options.signal.addEventListener('abort', () => call.cancel(), { once: true });
      }
    });
    return (async () => {
      let error;
      for await (const stub of this._tries(request)) {
        try {
          return await once(stub);
        } catch (e) {
          error = e;
          if (e.code !== grpc.status.UNAVAILABLE) break;
        }
      }
      throw toError(error);
    })();
  }

  /**
   * One chunk {ids, text, offset, logprobs} per committed block; the last one has `final` (a
   * result). With `stop`, text that might start a match is held back until it cannot (the last
   * chunk's text has the rest).
   * Breaking out of the loop or aborting `signal` cancels the request on the server.
   */
  async *stream(options = {}) {
    const request = buildRequest(options);
    const ids = [];
    const logprobs = [];
    let text = '';
    let error;
    for await (const stub of this._tries(request)) {
      request.resume_from_offset = ids.length;
      const call = stub.GenerateStream(request, this._metadata(), this._options(options.timeout));
      const onAbort = () => call.cancel();
      if (options.signal) options.signal.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const event of call) {
          if (event.event === 'block') {
            // After a retry the server resumes at resume_from_offset; drop anything resent.
            const skip = Math.max(0, ids.length - Number(event.block.offset));
            if (skip >= event.block.ids.length && event.block.ids.length > 0) continue;
            const blockIds = event.block.ids.slice(skip);
            const blockLogprobs = toLogprobs(event.block.logprobs).slice(skip);
            ids.push(...blockIds);
            logprobs.push(...blockLogprobs);
            text += event.block.text;
            yield { ids: blockIds, text: event.block.text, offset: Number(event.block.offset) + skip,
                    logprobs: blockLogprobs };
          } else if (event.event === 'final') {
            text += event.final.text;
            yield { ids: [], text: event.final.text, offset: ids.length, logprobs: [],
                    final: toResult(ids, text, event.final.stats, event.request_id, logprobs) };
            return;
          }
        }
        return;
      } catch (e) {
        error = e;
        if (e.code !== grpc.status.UNAVAILABLE) break;
      } finally {
        call.cancel();  // a no-op after the end; frees the request's KV when left early
        if (options.signal) options.signal.removeEventListener('abort', onAbort);
      }
    }
    throw toError(error);
  }

  /** The served models: [{name, version, vocabSize, maxPositionEmbeddings, blockLength, maskId}]. */
  models({ timeout } = {}) {
    return new Promise((resolve, reject) => {
      this._stub.ListModels({}, this._metadata(), this._options(timeout), (err, r) => {
        if (err) return reject(toError(err));
        resolve(r.models.map((m) => ({
          name: m.name, version: m.version, vocabSize: m.vocab_size,
          maxPositionEmbeddings: m.max_position_embeddings, blockLength: m.block_length,
          maskId: m.mask_id, stopIds: m.stop_ids,
        })));
      });
    });
  }

  /** Token ids of {text} or {chat} (rendered with the model's chat template). */
  tokenize({ text, chat, timeout } = {}) {
    const request = text !== undefined ? { text }
      : { chat: { messages: typeof chat === 'string' ? [{ role: 'user', content: chat }] : chat } };
    return new Promise((resolve, reject) => {
      this._stub.Tokenize(request, this._metadata(), this._options(timeout), (err, r) => {
        if (err) return reject(toError(err));
        resolve(r.ids);
      });
    });
  }

  close() { for (const stub of this._stubs) stub.close(); }
}

module.exports = { Client, DmoeError, status: grpc.status };
