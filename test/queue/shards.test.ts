// Sharded passes on the cluster: `--shards N` splits fetch (its decoding) and extract-features into
// N shard jobs on the workers, each merged into the very entry (same fingerprint, same bytes) one
// job writes; a shard that fails fails the stage cleanly.
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { startWorker, stopWorkers, waitFor, type Worker } from '../helpers/cluster.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { startTestRedis, type TestRedis } from '../helpers/redis.ts';
import { listFiles } from '../../src/util/hash.ts';

interface Summary {
  status: string;
  stages: Array<{ name: string; status: string; fingerprint: string; worker?: string; error?: string }>;
}

/**
 * The small pipeline's data stages and its base pass: 10 batches of 3 (or fewer at a set's end),
 * the 16 views first (made as they are read, 6 batches: each row weighs 1.2), then validation and
 * test (4 read rows each, 2 batches each). Cut by cost, 3 shards take batches 0–2, 3–4 and 5–9
 * (equal counts would take 0–2, 3–5, 6–9).
 */
const featuresPipeline = (weights: string) => `name: shards
backend: cpu
params:
  data: {type: path, default: ./images}
stages:
  fetch:
    kind: fetch
    with: {source: "\${params.data}", image_size: [96, 96]}
  split:
    kind: split
    needs: [fetch]
    with: {validation_fraction: 0.25, test_fraction: 0.25}
  augment:
    kind: augment
    needs: [split]
    with: {views: 2}
  features:
    kind: extract-features
    needs: [split, augment]
    with: {weights: ${weights}, alpha: 0.35, pooled: true, fine_tune_at: 54, batch_size: 3}
  head:
    kind: train-head
    needs: [features]
    with: {epochs: 1}
`;

let redis: TestRedis | undefined;
let workers: Worker[] = [];
let shared = '';
let images = '';
/** The local run's entry of the features stage (the first test's), what every sharded run must equal. */
let localFeatures = '';

test.before(async () => {
  redis = await startTestRedis();
  shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  // One-core workers (--cpus 1: their TensorFlow runs one thread), where the local run uses every
  // core: the bytes must not depend on that either.
  workers = [startWorker('w1', redis.url, shared), startWorker('w2', redis.url, shared)];
  images = path.join(mkdtempSync(path.join(os.tmpdir(), 'pipe-images-')), 'images');
  await writeImageFolder(images, { classes: { cats: 8, dogs: 8 }, height: 64, width: 80 });
  await waitFor('both workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));
});

test.after(async () => {
  await stopWorkers(workers);
  await redis?.stop();
});

async function assertSameFiles(mine: string, theirs: string): Promise<void> {
  const files = await listFiles(mine);
  assert.equal(await listFiles(theirs), files);
  for (const file of files) assert.ok(readFileSync(path.join(mine, file)).equals(readFileSync(path.join(theirs, file))), `${file} differs`);
}

const fingerprintOf = (summary: Summary, name: string) => summary.stages.find((s) => s.name === name)!.fingerprint;

test('extract-features in 3 shards on two workers: the same entry, byte for byte, as one local job', async () => {
  const here = project({ 'shards.yaml': featuresPipeline('none') });
  const local = await pipe(here, ['run', 'shards.yaml', '-p', `data=${images}`, '--json']);
  assert.is(local.exitCode, 0, local.stderr);

  const there = project({ 'shards.yaml': featuresPipeline('none') });
  const remote = await pipe(there, ['run', 'shards.yaml', '-p', `data=${images}`, '--queue', redis!.url, '--cache', shared, '--shards', '3', '--json']);
  const output = `${remote.stderr}\n${workers.map((w) => w.output()).join('\n')}`;
  assert.is(remote.exitCode, 0, output);

  const a = JSON.parse(local.stdout) as Summary;
  const b = JSON.parse(remote.stdout) as Summary;
  assert.equal(b.stages.map((s) => [s.name, s.status, s.fingerprint]), a.stages.map((s) => [s.name, 'ran', s.fingerprint]));
  const features = fingerprintOf(a, 'features');
  const mine = path.join(here, 'runs', 'cache', 'entries', features, 'out');
  localFeatures = mine;
  const theirs = path.join(shared, 'entries', features, 'out');
  const files = await listFiles(mine);
  assert.ok(files.some((f) => f.startsWith('boundary-views')) && files.includes('features.json'), files.join(', '));
  await assertSameFiles(mine, theirs);
  // fetch decoded its 16 images in 3 ranges, merged into the same entry.
  const fetched = fingerprintOf(a, 'fetch');
  await assertSameFiles(path.join(here, 'runs', 'cache', 'entries', fetched, 'out'), path.join(shared, 'entries', fetched, 'out'));
  assert.match(output, /fetch merge of 3 shards/);

  // Both workers computed shards; the parts are gone once merged; nothing half-written is left.
  for (const w of workers) assert.match(w.output(), /features shard \d\/3 \w+ started/);
  assert.match(output, /features merge of 3 shards/);
  assert.equal(readdirSync(path.join(shared, 'entries')).sort(), b.stages.map((s) => s.fingerprint).sort());
  assert.equal(existsSync(path.join(shared, 'tmp')) ? readdirSync(path.join(shared, 'tmp')) : [], []);
  assert.match(b.stages.find((s) => s.name === 'features')!.worker ?? '', /^w1\+w2$/);
  // Progress is summed over the shards: every total shown is the pass's 24 rows (16 views, 4 + 4), and it ends at 24/24.
  const totals = [...remote.stderr.matchAll(/features: \w+ (\d+)\/(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  assert.ok(totals.length > 0 && totals.every(([, total]) => total === 24), remote.stderr);
  assert.equal(totals.at(-1), [24, 24], remote.stderr);
  // The run's log has every shard's lines, marked; the shards were cut by cost, not by count.
  const log = readFileSync(path.join(there, 'runs', 'shards', 'latest', 'log.txt'), 'utf8');
  const cut = [[1, '0–2', 9, '39.7'], [2, '3–4', 6, '26.5'], [3, '5–9', 9, '33.8']] as const;
  for (const [n, batches, rows, share] of cut) {
    assert.match(log, `[shard ${n}/3] shard ${n} of 3: batches ${batches} of 10, ${rows} rows, ${share}% of the pass's cost (a view made on the fly weighs 1.2 read rows)`);
  }

  // Submitted again, with another shard count: everything is in the cache.
  const again = await pipe(there, ['run', 'shards.yaml', '-p', `data=${images}`, '--queue', redis!.url, '--cache', shared, '--shards', '2', '--json']);
  assert.is(again.exitCode, 0, again.stderr);
  assert.ok((JSON.parse(again.stdout) as Summary).stages.every((s) => s.status === 'cached'), again.stdout);
});

test('a shard that fails fails its stage: its error, dependents skipped, no entry or part published', async () => {
  const there = project({ 'shards.yaml': featuresPipeline('"http://127.0.0.1:9/weights.h5"') });
  const before = readdirSync(path.join(shared, 'entries')).sort();
  const remote = await pipe(there, ['run', 'shards.yaml', '-p', `data=${images}`, '--queue', redis!.url, '--cache', shared, '--shards', '2', '--retries', '0', '--json']);
  assert.is(remote.exitCode, 1, remote.stderr);
  const b = JSON.parse(remote.stdout) as Summary;
  const byName = Object.fromEntries(b.stages.map((s) => [s.name, s]));
  assert.is(byName['features']!.status, 'failed');
  assert.match(byName['features']!.error ?? '', /^shard [12] of 2: .*127\.0\.0\.1:9/);
  assert.is(byName['head']!.status, 'skipped');
  // The data stages were cached by the first test; the failed pass left nothing behind.
  assert.equal(readdirSync(path.join(shared, 'entries')).sort(), before);
  const tmp = path.join(shared, 'tmp');
  await waitFor('no staging directory left', () => !existsSync(tmp) || readdirSync(tmp).length === 0, 30_000);
});

test('a worker killed in the middle of a shard: another computes that shard; the entry is still the same bytes', async () => {
  await stopWorkers(workers);
  const cache = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  // Short job locks, so that the dead worker's shard is handed on in seconds.
  const env = { TF_NUM_INTRAOP_THREADS: '1', TF_NUM_INTEROP_THREADS: '1', PIPE_QUEUE_LOCK_MS: '2000' };
  workers = [startWorker('w3', redis!.url, cache, env), startWorker('w4', redis!.url, cache, env)];
  await waitFor('both workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));

  const there = project({ 'shards.yaml': featuresPipeline('none') });
  const submit = pipe(there, ['run', 'shards.yaml', '-p', `data=${images}`, '--queue', redis!.url, '--cache', cache, '--shards', '3', '--json']);
  let victim: Worker | undefined;
  await waitFor('a shard to start', () => (victim = workers.find((w) => /features shard \d\/3 \w+ started/.test(w.output()))) !== undefined, 120_000);
  victim!.process.kill('SIGKILL');
  const killed = /features (shard \d\/3) \w+ started/.exec(victim!.output())![1]!;
  const survivor = workers.find((w) => w !== victim)!;

  const remote = await submit;
  assert.is(remote.exitCode, 0, `${remote.stderr}\n${workers.map((w) => w.output()).join('\n')}`);
  const b = JSON.parse(remote.stdout) as Summary;
  assert.match(survivor.output(), new RegExp(`features ${killed.replace('/', '\\/')} \\w+ started`));
  await assertSameFiles(localFeatures, path.join(cache, 'entries', fingerprintOf(b, 'features'), 'out'));
  assert.equal(readdirSync(path.join(cache, 'entries')).sort(), b.stages.map((s) => s.fingerprint).sort());
  // What the dead worker was writing stays in tmp/ (the next run's stale sweep removes it), never in entries/.
  const tmp = path.join(cache, 'tmp');
  const left = existsSync(tmp) ? readdirSync(tmp) : [];
  assert.ok(left.every((name) => name.includes(`.${victim!.process.pid}.`)), left.join(', '));
});

test.run();
