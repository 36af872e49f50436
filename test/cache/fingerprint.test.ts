import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { canonicalJson, explainChange, fingerprintOf, type FingerprintRecord } from '../../src/cache/fingerprint.ts';

const base: FingerprintRecord = {
  schema: 1,
  kind: 'fine-tune',
  version: 1,
  params: { fine_tune_at: 100, learning_rate: 1e-5 },
  inputs: { 'data/photos': 'dir:aaaa1111' },
  upstream: { activations: 'f1', head: 'f2' },
  runtime: { tfjs: '4.22.0', flavour: 'cpu' },
};

test('canonical JSON does not depend on key order', () => {
  assert.is(canonicalJson({ b: 1, a: [2, { d: 3, c: 4 }] }), canonicalJson({ a: [2, { c: 4, d: 3 }], b: 1 }));
  assert.is(fingerprintOf(base), fingerprintOf(JSON.parse(JSON.stringify({ ...base, params: { learning_rate: 1e-5, fine_tune_at: 100 } }))));
  assert.is.not(fingerprintOf(base), fingerprintOf({ ...base, params: { fine_tune_at: 101, learning_rate: 1e-5 } }));
});

test('a change is explained field by field, naming upstream stages', () => {
  const after: FingerprintRecord = {
    ...base,
    version: 2,
    params: { fine_tune_at: 120, learning_rate: 1e-5, epochs: 3 },
    inputs: { 'data/photos': 'dir:bbbb2222' },
    upstream: { activations: 'f9', head: 'f2' },
    runtime: { tfjs: '4.22.0', flavour: 'gpu' },
  };
  assert.equal(explainChange(base, after, { activations: 'acts' }), [
    'fine-tune implementation changed: version 1 → 2',
    'param epochs added: 3',
    'param fine_tune_at changed: 100 → 120',
    'input data/photos changed (content aaaa1111 → bbbb2222)',
    "upstream stage 'acts' changed",
    'runtime flavour changed: cpu → gpu',
  ]);
  assert.equal(explainChange(base, base), []);
});

test.run();
