// Sweeps through a real Redis (Debian's redis-server from .redis/) and two `pipe worker` processes,
// each in its own working directory, sharing one cache directory; MLflow is a real server.
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project, startPipe } from '../helpers/cli.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';
import { countIn, startWorker, stopWorkers, waitFor, type Worker } from '../helpers/cluster.ts';
import { startTestRedis, type TestRedis } from '../helpers/redis.ts';

const sweepText = (name: string) => `name: ${name}
params:
  lr: 0.1
  depth: 1
stages:
  data:
    run: "echo data > data.txt; echo x >> count-data"
    outs: [data.txt]
  head:
    run: "cat data.txt > head-\${params.depth}.txt; echo x >> count-head"
    deps: [data.txt]
    outs: ["head-\${params.depth}.txt"]
  tune:
    run: "echo x >> attempts-tune-\${params.lr}; test \${params.lr} != 0 || exit 7; echo '{\\"score\\": \${params.depth}.\${params.lr}}' > m-\${params.depth}-\${params.lr}.json; echo x >> count-tune"
    deps: ["head-\${params.depth}.txt"]
    outs: ["m-\${params.depth}-\${params.lr}.json"]
    metrics: ["m-\${params.depth}-\${params.lr}.json"]
sweep:
  grid:
    depth: [1, 2]
  objective: score
`;

const slowText = `name: killq
params:
  n: 1
stages:
  prep:
    run: "echo prep > prep.txt; echo x >> count-prep"
    outs: [prep.txt]
  slow:
    run: "echo x >> starts-slow-\${params.n}; sleep 4; echo '{\\"v\\": \${params.n}}' > v-\${params.n}.json; echo x >> count-slow-\${params.n}"
    deps: [prep.txt]
    outs: ["v-\${params.n}.json"]
    metrics: ["v-\${params.n}.json"]
sweep:
  grid:
    n: [1, 2, 3]
  objective: v
`;

interface SweepJson {
  trials: Array<{ id: string; values: Record<string, unknown>; status: string; error?: string; metrics: Record<string, number> }>;
  stages: Array<{ name: string; status: string; worker?: string; error?: string }>;
}

const Cluster = suite<{ redis?: TestRedis; mlflow?: TestMlflow; shared: string; workers: Worker[] }>('cluster', { shared: '', workers: [] });

async function runsOf(mlflow: TestMlflow, experimentName: string) {
  const experiment = await mlflow.client.getExperimentByName(experimentName);
  assert.ok(experiment, `MLflow experiment ${experimentName}`);
  return (await mlflow.client.searchRuns({ experimentIds: [experiment!.experiment_id] })).runs;
}

const tag = (run: { data: { tags?: Array<{ key: string; value: string }> } }, key: string) => run.data.tags?.find((t) => t.key === key)?.value;

Cluster.before(async (ctx) => {
  [ctx.redis, ctx.mlflow] = await Promise.all([startTestRedis(), startTestMlflow()]);
});

Cluster.after(async (ctx) => {
  await stopWorkers(ctx.workers);
  await Promise.all([ctx.redis?.stop(), ctx.mlflow?.dispose()]);
});

Cluster('a sweep through two workers: shared stages once across both, results equal a local sweep, one MLflow run per trial', async (ctx) => {
  const { redis, mlflow } = ctx as Required<typeof ctx>;
  ctx.shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  const workers = [startWorker('w1', redis.url, ctx.shared), startWorker('w2', redis.url, ctx.shared)];
  ctx.workers.push(...workers);
  await waitFor('both workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));

  const client = project({ 'p.yaml': sweepText('swq') });
  const env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
  const remote = await pipe(client, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--queue', redis.url, '--cache', ctx.shared, '--json'], env);
  assert.is(remote.exitCode, 0, `${remote.stderr}\n${workers.map((w) => w.output()).join('\n')}`);
  const result = JSON.parse(remote.stdout) as SweepJson;
  assert.is(result.trials.length, 4);
  assert.ok(result.trials.every((t) => t.status === 'succeeded'), remote.stderr);

  // Every stage ran exactly once, somewhere; both workers took part.
  assert.equal([countIn(workers, 'count-data'), countIn(workers, 'count-head'), countIn(workers, 'count-tune')], [1, 2, 4]);
  assert.is(result.stages.length, 7);
  assert.ok(result.stages.every((s) => s.status === 'ran' && (s.worker === 'w1' || s.worker === 'w2')), JSON.stringify(result.stages));
  assert.equal(new Set(result.stages.map((s) => s.worker)).size, 2, 'both workers ran stages');
  assert.match(remote.stderr, /stage\s+status\s+time\s+worker\s+cache\s+fingerprint/);
  // The outputs came back to the submitter's workspace from the shared cache.
  assert.is(readFileSync(path.join(client, 'm-2-2.json'), 'utf8').trim(), '{"score": 2.2}');

  // The same sweep run locally gives the same trials and results.
  const local = project({ 'p.yaml': sweepText('swq') });
  const here = await pipe(local, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--json']);
  assert.is(here.exitCode, 0, here.stderr);
  const strip = (r: SweepJson) => r.trials.map(({ id, values, status, metrics }) => ({ id, values, status, metrics }));
  assert.equal(strip(result), strip(JSON.parse(here.stdout) as SweepJson));

  // MLflow: one parent and one finished child per trial, made by the submitter.
  const runs = await runsOf(mlflow, 'swq');
  assert.is(runs.length, 5, runs.map((r) => r.info.run_name).join(', '));
  const parent = runs.find((r) => tag(r, 'mlflow.parentRunId') === undefined)!;
  const children = runs.filter((r) => r !== parent);
  assert.ok(children.every((r) => r.info.status === 'FINISHED' && tag(r, 'mlflow.parentRunId') === parent.info.run_id));
  assert.equal(children.map((r) => r.data.metrics?.find((m) => m.key === 'score')?.value).sort(), [1.1, 1.2, 2.1, 2.2]);

  // A second submit finds everything in the shared cache: nothing goes to the workers.
  const again = await pipe(client, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--queue', redis.url, '--cache', ctx.shared, '--json']);
  assert.is(again.exitCode, 0, again.stderr);
  assert.ok((JSON.parse(again.stdout) as SweepJson).stages.every((s) => s.status === 'cached'));
  assert.is(countIn(workers, 'count-tune'), 4);
});

Cluster('a stage that fails for its own reasons is retried --retries times, not forever; its trial fails, the others complete', async (ctx) => {
  const { redis } = ctx as Required<typeof ctx>;
  // The shared cache named by the pipeline (`cache:`) instead of --cache.
  const client = project({ 'p.yaml': `cache: ${ctx.shared}\n${sweepText('swf')}` });
  const res = await pipe(client, ['sweep', 'p.yaml', '-S', 'lr=0,3', '-S', 'depth=1', '--queue', redis.url, '--retries', '1', '--json']);
  assert.is(res.exitCode, 1, res.stderr);
  const result = JSON.parse(res.stdout) as SweepJson;
  const byLr = Object.fromEntries(result.trials.map((t) => [String(t.values['lr']), t]));
  assert.is(byLr['0']?.status, 'failed');
  assert.match(byLr['0']?.error ?? '', /exited with code 7/);
  assert.is(byLr['3']?.status, 'succeeded');
  assert.is(countIn(ctx.workers, 'attempts-tune-0'), 2, 'one try and one retry');
  // The shared stages were in the cache already: only the new tune stages went to the workers.
  assert.is(countIn(ctx.workers, 'count-data'), 1);
});

Cluster('a worker killed in the middle of a stage: the job moves to the other worker; nothing lost or duplicated', async (ctx) => {
  const { redis, mlflow } = ctx as Required<typeof ctx>;
  await stopWorkers(ctx.workers);
  ctx.workers = [];
  const shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  // Short job locks so that the dead worker's job is noticed in seconds, not the default 30 s.
  const env = { PIPE_QUEUE_LOCK_MS: '2000' };
  const workers = [startWorker('w3', redis.url, shared, env), startWorker('w4', redis.url, shared, env)];
  ctx.workers.push(...workers);
  await waitFor('both workers', () => workers.every((w) => /taking stage jobs/.test(w.output())));

  const client = project({ 'p.yaml': slowText });
  const submit = startPipe(client, ['sweep', 'p.yaml', '--queue', redis.url, '--cache', shared, '--json'], { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri });
  let victim: Worker | undefined;
  await waitFor('a slow stage to start', () => (victim = workers.find((w) => /slow\[n=\d\] \w+ started/.test(w.output()))) !== undefined);
  // Let the command get going, then kill the worker without warning.
  await waitFor('the command to start', () => readdirSync(victim!.dir).some((f) => f.startsWith('starts-slow-')), 20_000);
  victim!.process.kill('SIGKILL');
  const killedStage = /(slow\[n=\d\]) \w+ started/.exec(victim!.output())![1];

  const res = await submit;
  assert.is(res.exitCode, 0, `${String(res.stderr)}\n${workers.map((w) => w.output()).join('\n')}`);
  const result = JSON.parse(String(res.stdout)) as SweepJson;
  assert.ok(result.trials.every((t) => t.status === 'succeeded'));
  assert.equal(result.trials.map((t) => t.metrics['v']).sort(), [1, 2, 3]);
  const survivor = workers.find((w) => w !== victim)!;
  assert.is(result.stages.find((s) => s.name === killedStage)?.worker, survivor.name, 'the killed stage was finished by the other worker');

  // Each stage completed exactly once; the killed one started twice.
  assert.is(countIn(workers, 'count-prep'), 1);
  for (const n of [1, 2, 3]) assert.is(countIn(workers, `count-slow-${n}`), 1, `slow n=${n} completed once`);
  const starts = [1, 2, 3].map((n) => countIn(workers, `starts-slow-${n}`));
  assert.is(starts.reduce((a, b) => a + b), 4, `starts: ${starts}`);
  // The cache holds the four complete entries and nothing half-written.
  const entries = readdirSync(path.join(shared, 'entries'));
  assert.is(entries.length, 4);
  assert.ok(entries.every((e) => existsSync(path.join(shared, 'entries', e, 'result.json'))));

  // One parent and three finished trial runs in MLflow: none lost, none twice.
  const runs = await runsOf(mlflow, 'killq');
  assert.is(runs.length, 4);
  assert.ok(runs.every((r) => r.info.status === 'FINISHED'));
});

Cluster('a worker hands out its GPUs: each GPU job sees only its own CUDA_VISIBLE_DEVICES', async (ctx) => {
  const { redis } = ctx as Required<typeof ctx>;
  await stopWorkers(ctx.workers);
  ctx.workers = [];
  const shared = mkdtempSync(path.join(os.tmpdir(), 'pipe-shared-cache-'));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-wg-'));
  const child = startPipe(dir, ['worker', '--queue', redis.url, '--cache', shared, '--cpus', '2', '--gpus', '2', '--name', 'wg']);
  let text = '';
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
  const worker: Worker = { name: 'wg', dir, process: child, output: () => text };
  ctx.workers.push(worker);
  await waitFor('the GPU worker', () => /taking stage jobs.*GPUs 0,1/.test(text));
  const gpuText = `name: gq
params:
  k: 1
stages:
  train:
    run: 'echo "$CUDA_VISIBLE_DEVICES" > gpu-\${params.k}.txt; sleep 2'
    outs: ["gpu-\${params.k}.txt"]
    resources: {gpu: 1}
sweep:
  grid:
    k: [1, 2]
`;
  const client = project({ 'p.yaml': gpuText });
  const res = await pipe(client, ['sweep', 'p.yaml', '--queue', redis.url, '--cache', shared]);
  assert.is(res.exitCode, 0, `${res.stderr}\n${text}`);
  const seen = [1, 2].map((k) => readFileSync(path.join(client, `gpu-${k}.txt`), 'utf8').trim()).sort();
  assert.equal(seen, ['0', '1']);
  await stopWorkers([worker]);
});

Cluster('no Redis at the URL: a clear error and exit 1', async () => {
  const client = project({ 'p.yaml': sweepText('swn') });
  const res = await pipe(client, ['run', 'p.yaml', '--queue', 'redis://127.0.0.1:1']);
  assert.is(res.exitCode, 1);
  assert.match(res.stderr, /cannot reach the queue at redis:\/\/127\.0\.0\.1:1/);
  const bad = await pipe(client, ['run', 'p.yaml', '--queue', 'http://x']);
  assert.is(bad.exitCode, 2);
  assert.match(bad.stderr, /expected a redis:\/\/ URL/);
});

Cluster.run();
