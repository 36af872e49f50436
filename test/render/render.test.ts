import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { RunEvent } from '../../src/core/events.ts';
import { formatDuration, ttyRenderer } from '../../src/render/render.ts';

test('durations read as a person writes them', () => {
  assert.is(formatDuration(250), '250 ms');
  assert.is(formatDuration(12_340), '12.3 s');
  assert.is(formatDuration(419_700), '7m00s');
  assert.is(formatDuration(3_599_600), '60m00s');
  assert.is(formatDuration(894_000), '14m54s');
});

test('the live table: a line per stage with its state, a progress bar with an estimate, logs above', () => {
  const writes: string[] = [];
  const render = ttyRenderer((text) => writes.push(text));
  const stageInfo = (name: string, cached: boolean) => ({ name, kind: 'command', fingerprint: 'f', cached, reasons: cached ? [] : ['no cached result'], params: {}, needs: [] });
  const events: RunEvent[] = [
    {
      type: 'run-start', runId: 'r1', runDir: '/r', pipelineName: 'demo', pipelineFile: 'p.yaml', experiment: 'demo', pipelineYaml: '',
      pipelineHash: '', params: {}, backend: 'cpu', startedAt: 0, stages: [stageInfo('a', true), stageInfo('b', false), stageInfo('c', false), stageInfo('d', false)],
    },
    { type: 'stage-start', stage: 'b', fingerprint: 'f', startedAt: Date.now() - 600_000, worker: 'w1' },
    { type: 'stage-start', stage: 'd', fingerprint: 'f', startedAt: Date.now() - 600_000, worker: 'w2' },
    { type: 'stage-progress', stage: 'b', done: 5, total: 10, label: 'images' },
    { type: 'stage-log', stage: 'b', stream: 'log', line: 'halfway' },
    { type: 'stage-log', stage: 'b', stream: 'stdout', line: 'not shown unless verbose' },
    { type: 'stage-end', stage: 'a', fingerprint: 'f', status: 'cached', durationMs: 1200, metrics: [], artifacts: [], summary: {} },
    { type: 'stage-end', stage: 'c', fingerprint: 'f', status: 'failed', durationMs: 300, error: 'boom', metrics: [], artifacts: [], summary: {} },
  ];
  for (const event of events) void render(event);
  const text = writes.join('');
  assert.ok(text.startsWith('run r1: demo\n  b: will run: no cached result\n  c: will run: no cached result\n  d: will run: no cached result\n'), text);
  assert.ok(text.includes('  b: halfway\n'));
  assert.not.ok(text.includes('not shown'));
  // The table as last drawn, after the escape that moves back over the previous one.
  const table = text.slice(text.lastIndexOf('\x1b[0J') + '\x1b[0J'.length).split('\n').slice(0, -1);
  assert.equal(table, [
    '↺ a         cached 1.2 s',
    `▶ b         ${'█'.repeat(10)}${'░'.repeat(10)} 5/10 images 10m00s ETA 10m00s`,
    '✖ c         failed 300 ms: boom',
    '▶ d         10m00s on w2',
  ]);
  void render({ type: 'run-end', endedAt: 1, summary: { runId: 'r1', pipeline: 'demo', status: 'failed', durationMs: 5, stages: [], metrics: {} } });
});

test.run();
