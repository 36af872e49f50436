// `pipe worker --cpus N` holds TensorFlow to N threads in the stage processes it starts
// (TF_NUM_INTRAOP_THREADS=N, TF_NUM_INTEROP_THREADS=1), unless its environment sets them: seen by a
// command stage that writes what it got, run through a real Redis on a one-core worker.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';
import { startWorker, stopWorkers, waitFor, type Worker } from '../helpers/cluster.ts';
import { startTestRedis, type TestRedis } from '../helpers/redis.ts';

const pipeline = (tag: string) => `name: threads
stages:
  threads:
    run: 'echo "\${TF_NUM_INTRAOP_THREADS:-unset}/\${TF_NUM_INTEROP_THREADS:-unset}" > threads-${tag}.txt'
    outs: [threads-${tag}.txt]
`;

let redis: TestRedis | undefined;
let workers: Worker[] = [];

test.before(async () => {
  redis = await startTestRedis();
});

test.after(async () => {
  await stopWorkers(workers);
  await redis?.stop();
});

/** Runs the one-stage pipeline through a fresh `--cpus 1` worker started with `env`; what the stage saw. */
async function seenBy(tag: string, env: Record<string, string>): Promise<string> {
  await stopWorkers(workers);
  const shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  workers = [startWorker(`threads-${tag}`, redis!.url, shared, env)];
  const worker = workers[0]!;
  await waitFor('the worker', () => /taking stage jobs/.test(worker.output()));
  const dir = project({ 'threads.yaml': pipeline(tag) });
  const run = await pipe(dir, ['run', 'threads.yaml', '--queue', redis!.url, '--cache', shared]);
  assert.is(run.exitCode, 0, `${run.stdout}\n${run.stderr}\n${worker.output()}`);
  const file = path.join(worker.dir, `threads-${tag}.txt`);
  assert.ok(existsSync(file), `the command ran in the worker's directory: ${worker.output()}`);
  return readFileSync(file, 'utf8').trim();
}

test('a --cpus 1 worker runs its stages with one TensorFlow thread, and says so', async () => {
  assert.is(await seenBy('default', {}), '1/1');
  assert.match(workers[0]!.output(), /1 CPU slot \(TensorFlow: 1 intra-op, 1 inter-op thread\)/);
});

test("the worker's own environment wins", async () => {
  assert.is(await seenBy('env', { TF_NUM_INTRAOP_THREADS: '2', TF_NUM_INTEROP_THREADS: '2' }), '2/2');
  assert.match(workers[0]!.output(), /TensorFlow: 2 intra-op, 2 inter-op threads/);
});

test.run();
