#!/usr/bin/env node
// Prints what Hugging Face `tokenizers` (the npm package pinned in package.json) produces for a
// tokenizer.json and a list of strings, as JSON on stdout. The dmoe tokenizer tests compare
// against this output (committed goldens in tests/tokenizer/golden/ and a live `reference` test).
//
//   node encode_reference.js --tokenizer <tokenizer.json> [--variant <patch.json>]
//        --cases <strings.json> [--no-vocab]
//
// A variant patch (tests/tokenizer/data/variants/*.json) changes the tokenizer before loading:
// top-level fields are replaced, "model" fields are replaced one by one, "added_tokens_extra" is
// appended to added_tokens and "merges_as_strings" rewrites merges in the legacy "a b" form.
'use strict';
const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const args = { vocab: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--tokenizer') args.tokenizer = argv[++i];
    else if (a === '--variant') args.variant = argv[++i];
    else if (a === '--cases') args.cases = argv[++i];
    else if (a === '--no-vocab') args.vocab = false;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.tokenizer || !args.cases) {
    throw new Error('usage: encode_reference.js --tokenizer FILE [--variant FILE] --cases FILE [--no-vocab]');
  }
  return args;
}

function applyVariant(base, variant) {
  const t = JSON.parse(JSON.stringify(base));
  for (const [key, value] of Object.entries(variant)) {
    if (key === 'description') continue;
    if (key === 'merges_as_strings') {
      if (value) t.model.merges = t.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
    } else if (key === 'added_tokens_extra') {
      t.added_tokens = (t.added_tokens || []).concat(value);
    } else if (key === 'model') {
      Object.assign(t.model, value);
    } else {
      t[key] = value;
    }
  }
  return t;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { Tokenizer } = require(path.join(__dirname, 'node_modules', 'tokenizers'));
  const version = require(path.join(__dirname, 'node_modules', 'tokenizers', 'package.json')).version;
  let json = JSON.parse(fs.readFileSync(args.tokenizer, 'utf8'));
  if (args.variant) json = applyVariant(json, JSON.parse(fs.readFileSync(args.variant, 'utf8')));
  const tokenizer = Tokenizer.fromString(JSON.stringify(json));
  const cases = JSON.parse(fs.readFileSync(args.cases, 'utf8'));

  const out = { tokenizers_version: version, vocab_size: tokenizer.getVocabSize(true), cases: [] };
  for (const text of cases) {
    const ids = (await tokenizer.encode(text)).getIds();
    const half = ids.slice(0, Math.floor(ids.length / 2));
    out.cases.push({
      text,
      ids,
      decoded: await tokenizer.decode(ids, false),
      decoded_skip_special: await tokenizer.decode(ids, true),
      half_decoded: await tokenizer.decode(half, false),
    });
  }
  if (args.vocab) {
    // Every id: its token string, that string's id (not always the same id: HF keeps the
    // normalised content of normalized added tokens) and the id decoded on its own.
    out.tokens = [];
    out.token_ids = [];
    out.single_decodes = [];
    for (let id = 0; id < out.vocab_size; id++) {
      const token = tokenizer.idToToken(id);
      out.tokens.push(token);
      out.token_ids.push(token === null ? null : tokenizer.tokenToId(token));
      out.single_decodes.push(await tokenizer.decode([id], false));
    }
  }
  // One case per line keeps the goldens small and their diffs readable.
  const lines = [
    '{',
    ` "tokenizers_version": ${JSON.stringify(out.tokenizers_version)},`,
    ` "vocab_size": ${out.vocab_size},`,
    ' "cases": [',
    out.cases.map((c) => '  ' + JSON.stringify(c)).join(',\n'),
    ' ]' + (args.vocab ? ',' : ''),
  ];
  if (args.vocab) {
    lines.push(` "tokens": ${JSON.stringify(out.tokens)},`);
    lines.push(` "token_ids": ${JSON.stringify(out.token_ids)},`);
    lines.push(` "single_decodes": ${JSON.stringify(out.single_decodes)}`);
  }
  lines.push('}');
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`encode_reference.js: ${e.stack || e}\n`);
  process.exit(1);
});
