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
  assert.ok(files.includes('mobilenet.yaml'), files.join(', '));
  for (const file of files) {
    const r = await pipe(os.tmpdir(), ['status', path.join(dir, file)], env);
    assert.is(r.exitCode, 0, `${file}: ${r.stderr}`);
    assert.match(r.stdout, /stages would run/);
  }
});

test('the sweep of mobilenet.yaml runs the base once for all trials, derives one boundary per fine_tune_at', async () => {
  const r = await pipe(os.tmpdir(), ['sweep', path.join(dir, 'mobilenet.yaml'), '--dry-run'], env);
  assert.is(r.exitCode, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /20 distinct stages/);
  for (const shared of ['fetch', 'split', 'augment', 'features', 'head']) assert.match(out, new RegExp(`\\n  ${shared}\\s+will run\\s+all trials`));
  assert.match(out, /activations\[fine_tune_at=60\]\s+will run\s+t1, t2/);
  assert.match(out, /activations\[fine_tune_at=130\]\s+will run\s+t5, t6/);
});

test.run();
