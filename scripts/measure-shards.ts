// The sharded base pass on the cluster (issue 16): a measurement, not a test. On generated images
// it runs fetch → split → augment → extract-features (MobileNetV2 alpha 1.0, random weights, the
// cost of the real base) through a private Redis on `pipe worker --cpus 1` workers whose TensorFlow
// runs one thread (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS = 1), first on one worker as one
// job, then (`--force features`) on two workers as two shards, and compares the pass's wall time
// (first shard's start to the merge's end) and the entry's bytes.
//
//   npx tsx scripts/measure-shards.ts [--per-class 300] [--size 160] [--views 2]
//
// Run it alone: every core it uses is one the other jobs of the machine do not get, and theirs
// slow it down. `uptime` before and after says how quiet the machine was.

import { execa } from 'execa';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { RunSummary } from '../src/core/events.ts';
import { listFiles } from '../src/util/hash.ts';
import { pipe } from '../test/helpers/cli.ts';
import { startWorker, stopWorkers, waitFor, type Worker } from '../test/helpers/cluster.ts';
import { writeImageFolder } from '../test/helpers/images.ts';
import { startPrivateRedis } from '../test/helpers/redis.ts';

const { values } = parseArgs({
  options: { 'per-class': { type: 'string', default: '300' }, size: { type: 'string', default: '160' }, views: { type: 'string', default: '2' } },
});
const perClass = Number(values['per-class']);
const size = Number(values.size);

const pipeline = `name: shards
backend: cpu
params:
  data: {type: path, default: ./images}
stages:
  fetch:
    kind: fetch
    with: {source: "\${params.data}", image_size: [${size}, ${size}]}
  split:
    kind: split
    needs: [fetch]
    with: {validation_fraction: 0.25, test_fraction: 0.25}
  augment:
    kind: augment
    needs: [split]
    with: {views: ${Number(values.views)}}
  features:
    kind: extract-features
    needs: [split, augment]
    with: {weights: none, alpha: 1.0, pooled: true, fine_tune_at: 100, dtype: float16}
`;

const uptime = async () => (await execa('uptime')).stdout.trim();
const oneThread = { TF_NUM_INTRAOP_THREADS: '1', TF_NUM_INTEROP_THREADS: '1' };
const root = mkdtempSync(path.join(os.tmpdir(), 'pipe-measure-shards-'));
const redis = await startPrivateRedis();
let workers: Worker[] = [];
try {
  console.log(`before: ${await uptime()}`);
  const images = path.join(root, 'images');
  await writeImageFolder(images, { classes: { cats: perClass, dogs: perClass }, height: 200, width: 200 });
  const shared = path.join(root, 'cache');
  const project = path.join(root, 'project');
  cpSync(images, path.join(project, 'images'), { recursive: true });
  writeFileSync(path.join(project, 'shards.yaml'), pipeline);

  /** Runs the pipeline on `names` workers in `shards` shards; the features stage's summary line. */
  async function pass(names: string[], shards: number, extra: string[]): Promise<RunSummary['stages'][number]> {
    await stopWorkers(workers);
    workers = names.map((name) => startWorker(name, redis.url, shared, oneThread));
    await waitFor('the workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));
    const run = await pipe(project, ['run', 'shards.yaml', '--queue', redis.url, '--cache', shared, '--shards', String(shards), '--json', ...extra]);
    if (run.exitCode !== 0) throw new Error(`pipe run failed (${run.exitCode}):\n${run.stderr}\n${workers.map((w) => w.output()).join('\n')}`);
    const summary = JSON.parse(run.stdout) as RunSummary;
    return summary.stages.find((s) => s.name === 'features')!;
  }

  const one = await pass(['solo'], 1, []);
  const oneDir = path.join(root, 'one-job');
  cpSync(path.join(shared, 'entries', one.fingerprint, 'out'), oneDir, { recursive: true });
  console.log(`one worker, one job: ${(one.durationMs / 1000).toFixed(1)} s, ${JSON.stringify(one.summary)}`);
  const two = await pass(['w1', 'w2'], 2, ['--force', 'features']);
  console.log(`two workers, two shards (${two.worker}): ${(two.durationMs / 1000).toFixed(1)} s, ${JSON.stringify(two.summary)}`);

  const files = await listFiles(oneDir);
  const theirs = path.join(shared, 'entries', two.fingerprint, 'out');
  const same = two.fingerprint === one.fingerprint
    && JSON.stringify(await listFiles(theirs)) === JSON.stringify(files)
    && files.every((f) => readFileSync(path.join(oneDir, f)).equals(readFileSync(path.join(theirs, f))));
  console.log(`ratio two/one: ${(two.durationMs / one.durationMs).toFixed(2)}; the same entry, byte for byte: ${same ? 'yes' : 'NO'}`);
  console.log(`after: ${await uptime()}`);
} finally {
  await stopWorkers(workers);
  await redis.stop();
  rmSync(root, { recursive: true, force: true });
}
