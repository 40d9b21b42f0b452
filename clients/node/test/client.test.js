// @dmoe/client against a real `dmoe serve` on the committed tiny model (node --test).
// DMOE_BIN_DIR: the dmoe binaries (default build/bin of the repository).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');
const { Client, DmoeError, status } = require('..');

const ROOT = path.join(__dirname, '..', '..', '..');
const BIN = process.env.DMOE_BIN_DIR || path.join(ROOT, 'build', 'bin');
const MODEL = path.join(ROOT, 'models', 'tiny-diffusion');
const CHAT = 'Reverse the list:\nred\ncat\nmoon\nship';
let server;
let client;

before(async () => {
  server = spawn(path.join(BIN, 'dmoe'), ['serve', '--model', MODEL, '--listen', '127.0.0.1:0',
                                          '--threads', '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dmoe serve did not start')), 60000);
    readline.createInterface({ input: server.stdout }).on('line', (line) => {
      const m = /^listening on (\S+)/.exec(line);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.on('exit', () => reject(new Error('dmoe serve exited')));
  });
  client = new Client(address, { timeout: 60 });
});

after(() => {
  if (client) client.close();
  if (server) server.kill('SIGTERM');
});

function engine(args) {
  return JSON.parse(execFileSync(path.join(BIN, 'dmoe'),
    ['generate', '--model', MODEL, '--json', ...args]).toString());
}

test('generate equals dmoe generate', async () => {
  const expected = engine(['--chat', CHAT, '--max-new-tokens', '32']);
  const r = await client.generate({ chat: CHAT, maxNewTokens: 32 });
  assert.deepStrictEqual(r.ids, expected.ids);
  assert.strictEqual(r.text, expected.text);
  assert.strictEqual(r.forwards, expected.forwards);
  assert.strictEqual(r.finishReason, expected.finish_reason);
});

test('stream chunks concatenate to generate', async () => {
  const unary = await client.generate({ prompt: 'Once upon a time', maxNewTokens: 48 });
  const chunks = [];
  for await (const c of client.stream({ prompt: 'Once upon a time', maxNewTokens: 48 })) chunks.push(c);
  assert.deepStrictEqual(chunks.flatMap((c) => c.ids), unary.ids);
  assert.strictEqual(chunks.map((c) => c.text).join(''), unary.text);
  assert.deepStrictEqual(chunks[chunks.length - 1].final.ids, unary.ids);
});

test('models and tokenize', async () => {
  const models = await client.models();
  assert.strictEqual(models[0].name, 'tiny-diffusion');
  const ids = await client.tokenize({ text: 'hello world' });
  assert.ok(ids.length > 0);
});

test('errors carry the gRPC code', async () => {
  await assert.rejects(client.generate({ prompt: 'x', maxNewTokens: 0 }), (e) => {
    assert.ok(e instanceof DmoeError);
    assert.strictEqual(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /max_new_tokens/);
    return true;
  });
  await assert.rejects(client.stream({ prompt: 'x', chat: 'y' }).next(), TypeError);
});

test('AbortSignal cancels a stream', async () => {
  const controller = new AbortController();
  const seen = [];
  await assert.rejects((async () => {
    for await (const c of client.stream({ prompt: 'Once upon a time', maxNewTokens: 512, stopIds: [],
                                          signal: controller.signal })) {
      seen.push(c);
      controller.abort();
    }
  })(), (e) => e.code === status.CANCELLED);
  assert.strictEqual(seen.length, 1);
  const r = await client.generate({ prompt: 'Once', maxNewTokens: 8 });  // still serving
  assert.ok(r.ids.length > 0);
});

test('stop string cuts the text right before it', async () => {
  const full = await client.generate({ chat: CHAT, maxNewTokens: 32 });
  assert.ok(full.text.includes('moon'));
  assert.strictEqual(full.matchedStop, '');
  const r = await client.generate({ chat: CHAT, maxNewTokens: 32, stop: ['moon', 'never-generated'] });
  assert.strictEqual(r.text, full.text.slice(0, full.text.indexOf('moon')));
  assert.strictEqual(r.finishReason, 'stop');
  assert.strictEqual(r.matchedStop, 'moon');
  assert.deepStrictEqual(r.ids, full.ids.slice(0, r.ids.length));  // through the completing token
  const one = await client.generate({ chat: CHAT, maxNewTokens: 32, stop: 'moon' });  // a string
  assert.deepStrictEqual([one.text, one.ids, one.matchedStop], [r.text, r.ids, r.matchedStop]);
  await assert.rejects(client.generate({ chat: CHAT, stop: [1] }), TypeError);
});

test('logprobs: one per id, each <= 0', async () => {
  const plain = await client.generate({ chat: CHAT, maxNewTokens: 32 });
  const r = await client.generate({ chat: CHAT, maxNewTokens: 32, logprobs: true });
  assert.deepStrictEqual(plain.logprobs, []);
  assert.deepStrictEqual(r.ids, plain.ids);  // asking for logprobs does not change the decoding
  assert.deepStrictEqual(r.logprobs.map((l) => l.id), r.ids);
  for (const l of r.logprobs) {
    assert.ok(l.logprob <= 0, `logprob ${l.logprob}`);
    assert.ok(Buffer.isBuffer(l.token));
  }
  // The tokens' bytes spell the text (special tokens have none).
  assert.strictEqual(Buffer.concat(r.logprobs.map((l) => l.token)).toString('utf8'), r.text);
});

test('streamed stop and logprobs equal unary', async () => {
  const options = { chat: CHAT, maxNewTokens: 32, stop: ['moon'], logprobs: true };
  const unary = await client.generate(options);
  const chunks = [];
  for await (const c of client.stream(options)) chunks.push(c);
  const final = chunks[chunks.length - 1].final;
  assert.ok(final);
  assert.deepStrictEqual(chunks.flatMap((c) => c.ids), unary.ids);
  assert.strictEqual(chunks.map((c) => c.text).join(''), unary.text);
  for (const c of chunks) assert.deepStrictEqual(c.logprobs.map((l) => l.id), c.ids);
  assert.deepStrictEqual(chunks.flatMap((c) => c.logprobs), unary.logprobs);
  assert.deepStrictEqual(final.logprobs, unary.logprobs);
  assert.deepStrictEqual([final.finishReason, final.matchedStop], ['stop', 'moon']);
});

test('token editing equals dmoe generate', async () => {
  const off = await client.generate({ chat: CHAT, maxNewTokens: 32 });
  assert.deepStrictEqual([off.edits, off.remasks], [0, 0]);
  const cases = [
    [{ editing: 'quality' }, ['--editing', 'quality']],
    [{ editThreshold: 0.5, maxPostSteps: 4 }, ['--edit-threshold', '0.5', '--max-post-steps', '4']],
  ];
  for (const [options, flags] of cases) {
    const expected = engine(['--chat', CHAT, '--max-new-tokens', '32', ...flags]);
    const r = await client.generate({ chat: CHAT, maxNewTokens: 32, ...options });
    assert.deepStrictEqual(r.ids, expected.ids);
    assert.strictEqual(r.forwards, expected.forwards);
    assert.strictEqual(r.edits, expected.edits);
    assert.ok(r.remasks >= 0 && r.remasks <= r.edits);
  }
  await assert.rejects(client.generate({ chat: CHAT, editing: 'fast' }), TypeError);
  await assert.rejects(client.generate({ chat: CHAT, editThreshold: 2 }), (e) => {
    assert.strictEqual(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /edit_threshold/);
    return true;
  });
});

test('a dead target falls back to the next', async () => {
  const expected = engine(['--prompt', 'Once upon a time', '--max-new-tokens', '32']);
  // Nothing listens on port 1: every call goes on to the fallback target.
  const c = new Client('127.0.0.1:1', { fallbackTargets: [client._target], retryTimeout: 20,
                                        timeout: 60 });
  try {
    const r = await c.generate({ prompt: 'Once upon a time', maxNewTokens: 32 });
    assert.deepStrictEqual(r.ids, expected.ids);
    const chunks = [];
    for await (const x of c.stream({ prompt: 'Once upon a time', maxNewTokens: 32 })) chunks.push(x);
    assert.deepStrictEqual(chunks.flatMap((x) => x.ids), expected.ids);
  } finally {
    c.close();
  }
  const noRetries = new Client('127.0.0.1:1', { timeout: 10 });
  await assert.rejects(noRetries.generate({ prompt: 'x', maxNewTokens: 4 }), DmoeError);
  noRetries.close();
});

function serveOn(port, journal) {
  const proc = spawn(path.join(BIN, 'dmoe'), ['serve', '--model', MODEL, '--listen',
                                              `127.0.0.1:${port}`, '--threads', '1', '--journal', journal],
                     { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dmoe serve did not start')), 60000);
    readline.createInterface({ input: proc.stdout }).on('line', (line) => {
      if (line.startsWith('listening on')) { clearTimeout(timer); resolve(proc); }
    });
  });
}

test('a stream survives its server killed and restarted', async () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const net = require('node:net');
  // Threshold 1 (a token per forward) and stop id 3 (never generated here): 512 forwards, so
  // the stream is still running when the server dies.
  const expected = engine(['--prompt', 'Water boils at', '--max-new-tokens', '512',
                           '--threshold', '1.0', '--stop-ids', '3']);
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmoe-node-'));
  const journal = path.join(dir, 'journal');
  let proc = await serveOn(port, journal);
  const c = new Client(`127.0.0.1:${port}`, { retryTimeout: 60, timeout: 120 });
  const firstTries = c._tries.bind(c);
  let tries = 0;
  c._tries = async function* counted(request) {
    for await (const stub of firstTries(request)) { ++tries; yield stub; }
  };
  try {
    const ids = [];
    let restarted = false;
    for await (const chunk of c.stream({ prompt: 'Water boils at', maxNewTokens: 512, threshold: 1.0,
                                         stopIds: [3], requestId: 'node-restart' })) {
      if (chunk.ids.length) assert.strictEqual(chunk.offset, ids.length);  // nothing repeated or skipped
      ids.push(...chunk.ids);
      if (!restarted && ids.length) {
        const exited = new Promise((r) => proc.on('exit', r));
        proc.kill('SIGKILL');
        await exited;
        proc = await serveOn(port, journal);
        restarted = true;
      }
    }
    assert.ok(restarted);
    assert.ok(tries >= 2, 'the stream never broke: the kill came after the last block');
    assert.deepStrictEqual(ids, expected.ids);
  } finally {
    c.close();
    proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
