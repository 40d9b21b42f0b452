#!/usr/bin/env node
// Regenerates tests/tokenizer/golden/*.json with Hugging Face `tokenizers`:
//   cd tests/reference && npm install && node update_tokenizer_golden.js
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..', '..');
const base = path.join(root, 'tools', 'data', 'tiny_tokenizer', 'tokenizer.json');
const cases = path.join(root, 'tests', 'tokenizer', 'data', 'test_strings.json');
const variantsDir = path.join(root, 'tests', 'tokenizer', 'data', 'variants');
const goldenDir = path.join(root, 'tests', 'tokenizer', 'golden');

const runs = [{ name: 'tiny', variant: null }].concat(
  fs.readdirSync(variantsDir).filter((f) => f.endsWith('.json')).sort()
    .map((f) => ({ name: path.basename(f, '.json'), variant: path.join(variantsDir, f) })));
for (const run of runs) {
  const args = [path.join(__dirname, 'encode_reference.js'), '--tokenizer', base, '--cases', cases];
  if (run.variant) args.push('--variant', run.variant);
  const output = execFileSync(process.execPath, args, { maxBuffer: 64 << 20 });
  fs.writeFileSync(path.join(goldenDir, `${run.name}.json`), output);
  console.log(`wrote tests/tokenizer/golden/${run.name}.json`);
}
