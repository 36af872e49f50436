// The pipelines the project ships are valid, plan, and share across a sweep what their comments say.
import { mkdtempSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe } from './helpers/cli.ts';

const dir = fileURLToPath(new URL('../pipelines/', import.meta.url));
const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
const env = { PIPE_RUNS_DIR: mkdtempSync(path.join(os.tmpdir(), 'pipe-pipelines-')) };

test('every shipped pipeline plans', async () => {
  assert.ok(files.includes('mobilenet.yaml') && files.includes('mobilenet-onepass.yaml'), files.join(', '));
  for (const file of files) {
    const r = await pipe(os.tmpdir(), ['status', path.join(dir, file)], env);
    assert.is(r.exitCode, 0, `${file}: ${r.stderr}`);
    assert.match(r.stdout, /stages would run/);
  }
});

test('the sweep of mobilenet.yaml shares the features and the head; the one-pass layout shares up to the views', async () => {
  const shared = async (file: string) => {
    const r = await pipe(os.tmpdir(), ['sweep', path.join(dir, file), '--dry-run'], env);
    assert.is(r.exitCode, 0, r.stderr);
    return r.stdout;
  };
  const two = await shared('mobilenet.yaml');
  assert.match(two, /20 distinct stages/);
  assert.match(two, /\n  features\s+will run\s+all trials/);
  assert.match(two, /\n  head\s+will run\s+all trials/);
  assert.match(two, /activations\[fine_tune_at=60\]\s+will run\s+t1, t2/);
  const one = await shared('mobilenet-onepass.yaml');
  assert.match(one, /21 distinct stages/);
  assert.match(one, /\n  augment\s+will run\s+all trials/);
  assert.match(one, /features\[fine_tune_at=60\]\s+will run\s+t1, t2/);
  assert.match(one, /head\[fine_tune_at=60\]\s+will run\s+t1, t2/);
});

test.run();
