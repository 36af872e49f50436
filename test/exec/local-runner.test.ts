// The local runner on real command stages in a temporary project: a stage starts when its upstream
// stages are done, stages share the CPU slots, a failure skips only what depends on it (or, with
// --fail-fast, stops the run), an abort stops the running stage, and a cached entry is restored.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cache } from '../../src/cache/cache.ts';
import type { RunEvent, RunSummary, StageEndEvent } from '../../src/core/events.ts';
import type { ExecuteOptions } from '../../src/exec/run-book.ts';
import { localRunner } from '../../src/exec/local-runner.ts';
import { analyze } from '../../src/pipeline/analyze.ts';
import { loadPipeline } from '../../src/pipeline/pipeline.ts';
import { planPipeline, type Plan } from '../../src/plan/plan.ts';
import { stageKinds } from '../../src/stages/index.ts';

interface Project {
  dir: string;
  cache: Cache;
  plan(): Promise<Plan>;
}

function project(yaml: string): Project {
  const dir = mkdtempSync(path.join(tmpdir(), 'pipe-runner-'));
  writeFileSync(path.join(dir, 'p.yaml'), yaml);
  const cache = new Cache(path.join(dir, 'cache'));
  return {
    dir,
    cache,
    async plan() {
      const loaded = loadPipeline(path.join(dir, 'p.yaml'), 'p.yaml');
      assert.equal(loaded.diagnostics, []);
      const analyzed = await analyze(loaded.file!, { kinds: stageKinds, cwd: dir });
      assert.ok(analyzed.ok);
      const planned = await planPipeline(analyzed.value, { cache, statePath: path.join(dir, 'state.json'), hashIndexPath: path.join(dir, 'hashes.json'), runtime: {} });
      assert.ok(planned.ok);
      return planned.plan;
    },
  };
}

interface Ran {
  summary: RunSummary;
  events: RunEvent[];
  /** Stage names in the order of their stage-start (s) and stage-end (e) events, e.g. ['s:a', 'e:a']. */
  timeline: string[];
  end(stage: string): StageEndEvent;
}

async function execute(p: Project, options: Partial<ExecuteOptions> = {}, onEvent?: (e: RunEvent) => void): Promise<Ran> {
  const plan = await p.plan();
  const events: RunEvent[] = [];
  const summary = await localRunner({
    plan,
    cache: p.cache,
    run: {
      runId: 'r1', runDir: p.dir, pipelineName: plan.pipeline.file.name, pipelineFile: 'p.yaml', experiment: 'x',
      pipelineYaml: '', pipelineHash: '', params: {}, backend: 'cpu', startedAt: Date.now(),
    },
    statePath: path.join(p.dir, 'state.json'),
    downloadCacheDir: path.join(p.dir, 'downloads'),
    flavour: 'cpu',
    cpuSlots: 2,
    gpuIds: [],
    failFast: false,
    listeners: [(e) => {
      events.push(e);
      onEvent?.(e);
    }],
    ...options,
  });
  const timeline = events.flatMap((e) => (e.type === 'stage-start' ? [`s:${e.stage}`] : e.type === 'stage-end' ? [`e:${e.stage}`] : []));
  const end = (stage: string) => events.find((e): e is StageEndEvent => e.type === 'stage-end' && e.stage === stage)!;
  return { summary, events, timeline, end };
}

const statuses = (ran: Ran) => Object.fromEntries(ran.summary.stages.map((s) => [s.name, s.status]));
const read = (p: Project, file: string) => readFileSync(path.join(p.dir, file), 'utf8');

/** A shell loop that waits (up to 10 s) for a file the test or another stage creates. */
const waitFor = (file: string) => `i=0; while [ ! -e ${file} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; test -e ${file}`;

test('a stage starts only when its upstream stages are done, and reads what they wrote', async () => {
  const p = project(`name: order
stages:
  c:
    run: [sh, -c, "cat b.txt > c.txt"]
    deps: [b.txt]
    outs: [c.txt]
  a:
    run: [sh, -c, "echo a > a.txt"]
    outs: [a.txt]
  b:
    run: [sh, -c, "cat a.txt > b.txt; echo b >> b.txt"]
    deps: [a.txt]
    outs: [b.txt]
`);
  const ran = await execute(p);
  assert.equal(ran.timeline, ['s:a', 'e:a', 's:b', 'e:b', 's:c', 'e:c']);
  assert.equal(statuses(ran), { a: 'ran', b: 'ran', c: 'ran' });
  assert.is(read(p, 'c.txt'), 'a\nb\n');
  assert.is(ran.summary.status, 'succeeded');
  assert.equal(ran.events[0]?.type, 'run-start');
  assert.equal(ran.events.at(-1)?.type, 'run-end');
  // Each finished stage is recorded as the pipeline's latest state.
  const state = JSON.parse(read(p, 'state.json')) as { stages: Record<string, { fingerprint: string }> };
  assert.equal(Object.keys(state.stages).sort(), ['a', 'b', 'c']);
});

test('independent stages run at the same time within the CPU slots, one after another in one slot', async () => {
  const together = project(`name: parallel
stages:
  x:
    run: [sh, -c, "touch x.ready; ${waitFor('y.ready')}"]
  y:
    run: [sh, -c, "touch y.ready; ${waitFor('x.ready')}"]
`);
  // Each waits for the other to have started: this ends only if both ran at once.
  assert.equal(statuses(await execute(together, { cpuSlots: 2 })), { x: 'ran', y: 'ran' });

  const serial = project(`name: serial
stages:
  one: {run: [sh, -c, "echo 1"]}
  two: {run: [sh, -c, "echo 2"], resources: {cpu: 2}}
`);
  const ran = await execute(serial, { cpuSlots: 1 });
  assert.equal(ran.timeline, ['s:one', 'e:one', 's:two', 'e:two'], 'a stage asking for more slots than there are gets them all');
});

test('a failed stage skips its dependents, transitively; independent stages still run', async () => {
  const p = project(`name: failing
stages:
  bad:
    run: [sh, -c, "echo oops >&2; exit 3"]
  next:
    run: [sh, -c, "echo next > next.txt"]
    needs: [bad]
  last:
    run: [sh, -c, "echo last"]
    needs: [next]
  other:
    run: [sh, -c, "echo other > other.txt"]
    outs: [other.txt]
`);
  const ran = await execute(p);
  assert.equal(statuses(ran), { bad: 'failed', next: 'skipped', last: 'skipped', other: 'ran' });
  assert.match(ran.end('bad').error ?? '', /exited with code 3/);
  assert.is(ran.end('next').error, "upstream stage 'bad' did not complete");
  assert.is(ran.end('last').error, "upstream stage 'next' did not complete");
  assert.ok(ran.events.some((e) => e.type === 'stage-log' && e.stage === 'bad' && e.stream === 'stderr' && e.line === 'oops'));
  assert.is(existsSync(path.join(p.dir, 'next.txt')), false);
  assert.is(read(p, 'other.txt'), 'other\n');
  assert.is(ran.summary.status, 'failed');
  assert.is(await p.cache.has(ran.end('bad').fingerprint), false, 'a failed stage leaves no entry');
});

test('--fail-fast: the first failure stops the running stages and starts nothing more', async () => {
  const p = project(`name: failfast
stages:
  slow:
    run: [sh, -c, "touch slow.started; sleep 30; echo done > slow.txt"]
  bad:
    run: [sh, -c, "${waitFor('slow.started')}; exit 1"]
  waiting:
    run: [sh, -c, "echo waited > waiting.txt"]
`);
  const t0 = Date.now();
  const ran = await execute(p, { failFast: true, cpuSlots: 2 });
  assert.ok(Date.now() - t0 < 20_000, 'the sleeping stage was stopped, not waited for');
  assert.equal(statuses(ran), { slow: 'failed', bad: 'failed', waiting: 'skipped' });
  assert.is(ran.end('slow').error, "stopped: --fail-fast: stage 'bad' failed");
  assert.is(ran.end('waiting').error, "not started: --fail-fast: stage 'bad' failed");
  assert.is(existsSync(path.join(p.dir, 'waiting.txt')), false);
});

test('an abort (Ctrl-C) stops the running stage and skips the rest', async () => {
  const p = project(`name: abort
stages:
  slow:
    run: [sh, -c, "touch slow.started; sleep 30"]
  after:
    run: [sh, -c, "echo after"]
    needs: [slow]
  queued:
    run: [sh, -c, "echo queued"]
`);
  const controller = new AbortController();
  // Abort once the command runs (the marker file exists), as a user's Ctrl-C would.
  const watcher = setInterval(() => {
    if (existsSync(path.join(p.dir, 'slow.started'))) controller.abort('SIGINT');
  }, 50);
  const t0 = Date.now();
  const ran = await execute(p, { signal: controller.signal, cpuSlots: 1 }).finally(() => clearInterval(watcher));
  assert.ok(Date.now() - t0 < 20_000);
  assert.equal(statuses(ran), { slow: 'failed', after: 'skipped', queued: 'skipped' });
  assert.is(ran.end('slow').error, 'stopped: interrupted by SIGINT');
  assert.is(ran.end('queued').error, 'not started: interrupted by SIGINT');
  assert.is(ran.end('after').error, "upstream stage 'slow' did not complete");
});

test('a cached stage is not run again: its outputs, metrics and facts are restored from the entry', async () => {
  const p = project(`name: cached
stages:
  gen:
    run: [sh, -c, "echo run >> runs.log; echo hello > gen.txt; echo '{\\"acc\\": 0.75}' > m.json"]
    outs: [gen.txt]
    metrics: [m.json]
`);
  const first = await execute(p);
  assert.is(first.end('gen').status, 'ran');
  assert.equal(first.end('gen').metrics.map((m) => [m.key, m.value]), [['acc', 0.75]]);

  writeFileSync(path.join(p.dir, 'gen.txt'), 'edited by hand');
  const second = await execute(p);
  const end = second.end('gen');
  assert.is(end.status, 'cached');
  assert.equal(second.timeline, ['e:gen'], 'no stage-start: nothing ran');
  assert.is(read(p, 'runs.log'), 'run\n', 'the command ran once');
  assert.is(read(p, 'gen.txt'), 'hello\n', 'the output is put back as the entry has it');
  assert.equal(end.metrics.map((m) => [m.key, m.value]), [['acc', 0.75]]);
  assert.equal(end.artifacts.map((a) => a.name), ['m.json']);
  assert.is(end.outDir, first.end('gen').outDir);
  assert.equal(Object.keys(end.summary), ['original_duration_s']);

  rmSync(path.join(p.dir, 'gen.txt'));
  assert.is((await execute(p)).end('gen').status, 'cached');
  assert.is(read(p, 'gen.txt'), 'hello\n', 'a deleted output comes back too');
});

test.run();
