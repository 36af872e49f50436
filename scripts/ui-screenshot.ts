// A real-browser check of the MLflow UI: headless Chromium (Debian's `chromium`) opens a finished
// run's page, saves screenshots and prints what the page shows (run name, status, metric charts).
//
//   npx tsx scripts/ui-screenshot.ts --demo [--out DIR]
//       starts a throwaway MLflow server from .venv, records a run through pipe's tracker (per-epoch
//       loss/accuracy over both training phases, cached and ran stages, artifacts), then looks at it;
//   npx tsx scripts/ui-screenshot.ts --run RUN_ID [--uri URL] [--out DIR]
//       looks at a run on the given server (default: the project's embedded server).
//
// Needs: apt-get install chromium (at /usr/bin/chromium, or set CHROMIUM), playwright-core.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ChildProcess } from 'node:child_process';
import { chromium, type Page } from 'playwright-core';
import type { RunEvent, RunStartEvent } from '../src/core/events.ts';
import { MLflowClient } from '../src/tracking/mlflow-client.ts';
import { findEmbeddedServer, freePort, killGroup, spawnMlflowServer, waitForHealth } from '../src/tracking/server.ts';
import { createTracker } from '../src/tracking/tracker.ts';

const repoDir = resolve(fileURLToPath(import.meta.url), '..', '..');

const { values: args } = parseArgs({
  options: {
    demo: { type: 'boolean', default: false },
    run: { type: 'string' },
    uri: { type: 'string' },
    out: { type: 'string', default: join(repoDir, 'runs', 'ui-screenshot') },
    keep: { type: 'boolean', default: false },
  },
});

async function main(): Promise<number> {
  const outDir = resolve(args.out!);
  mkdirSync(outDir, { recursive: true });
  let server: ChildProcess | undefined;
  let scratch: string | undefined;
  try {
    let uri: string;
    let runId: string;
    if (args.demo) {
      scratch = mkdtempSync(join(tmpdir(), 'pipe-ui-demo-'));
      const port = await freePort();
      uri = `http://127.0.0.1:${port}`;
      const logFile = join(scratch, 'server.log');
      server = spawnMlflowServer({ mlflowBin: join(repoDir, '.venv', 'bin', 'mlflow'), storeDir: join(scratch, 'mlflow'), host: '127.0.0.1', port, logFile, detached: true });
      await waitForHealth(uri, { child: server, timeoutMs: 180_000, logFile });
      console.log(`MLflow server (throwaway) at ${uri}`);
      runId = await recordDemoRun(uri, scratch);
    } else {
      if (args.run === undefined) throw new Error('ui-screenshot: pass --run RUN_ID (or --demo)');
      runId = args.run;
      const found = args.uri ?? (await findEmbeddedServer(repoDir))?.uri;
      if (found === undefined) throw new Error('ui-screenshot: no MLflow server: pass --uri or start one with `pipe ui`');
      uri = found;
    }
    const run = await new MLflowClient({ uri }).getRun(runId);
    const runUrl = `${uri}/#/experiments/${run.info.experiment_id}/runs/${runId}`;
    await look(runUrl, run.info.run_name ?? runId, outDir);
    return 0;
  } finally {
    if (server?.pid !== undefined && !args.keep) killGroup(server.pid);
    if (scratch !== undefined && !args.keep) rmSync(scratch, { recursive: true, force: true });
  }
}

/** A run shaped like the flagship recipe, recorded through the real tracker. */
async function recordDemoRun(uri: string, scratch: string): Promise<string> {
  const runDir = join(scratch, 'runs', 'cats-dogs', '20261128-ui-demo');
  const files = join(scratch, 'files');
  mkdirSync(runDir, { recursive: true });
  mkdirSync(join(files, 'plots'), { recursive: true });
  writeFileSync(join(files, 'plots', 'notes.txt'), 'learning curves go here\n');
  writeFileSync(join(runDir, 'log.txt'), 'demo run log\n');
  const t0 = Date.now() - 30 * 60_000;
  const start: RunStartEvent = {
    type: 'run-start',
    runId: '20261128-ui-demo',
    runDir,
    pipelineName: 'cats-dogs',
    pipelineFile: 'pipelines/cats-dogs.yaml',
    experiment: 'cats-dogs',
    pipelineYaml: 'name: cats-dogs\n# demo\n',
    pipelineHash: 'c0ffee'.repeat(10),
    params: { initial_epochs: 10, fine_tune_epochs: 10, fine_tune_at: 100 },
    backend: 'cpu',
    stages: [
      { name: 'data', kind: 'fetch', fingerprint: 'a', cached: true, reasons: [], needs: [], params: { url: 'https://example/cats_and_dogs_filtered.zip' } },
      { name: 'train-head', kind: 'train-head', fingerprint: 'b', cached: false, reasons: ['params changed: lr'], needs: ['data'], params: { epochs: 10, lr: 1e-4 } },
      { name: 'fine-tune', kind: 'fine-tune', fingerprint: 'c', cached: false, reasons: ['upstream train-head ran'], needs: ['train-head'], params: { epochs: 20, initial_epoch: 10, fine_tune_at: 100, lr: 1e-5 } },
    ],
    startedAt: t0,
  };
  const tracker = createTracker({ projectDir: scratch, trackingUri: uri, batchIntervalMs: 200, log: (m) => console.log(`tracker: ${m}`) });
  const emit = (e: RunEvent): void => void tracker.listener(e);
  emit(start);
  emit({ type: 'stage-end', stage: 'data', status: 'cached', fingerprint: 'a', durationMs: 40, metrics: [], artifacts: [], summary: {} });
  let t = t0 + 60_000;
  const curve = (epoch: number, phase2: boolean) => {
    const acc = phase2 ? 0.955 + 0.02 * (1 - Math.exp(-(epoch - 9) / 3)) : 0.55 + 0.41 * (1 - Math.exp(-epoch / 2.5));
    const valAcc = acc + 0.01 * Math.sin(epoch);
    return { accuracy: acc, loss: -Math.log(acc) * 0.9, val_accuracy: valAcc, val_loss: -Math.log(valAcc) * 0.85 };
  };
  for (const [stage, from, to] of [['train-head', 0, 10], ['fine-tune', 10, 21]] as const) {
    emit({ type: 'stage-start', stage, fingerprint: stage, startedAt: t });
    const points = [];
    for (let epoch = from; epoch < to; epoch++) {
      t += 45_000;
      for (const [key, value] of Object.entries(curve(epoch, stage === 'fine-tune'))) {
        const point = { key, value, step: epoch, timestamp: t };
        points.push(point);
        emit({ type: 'stage-metric', stage, point });
      }
    }
    const test = stage === 'fine-tune' ? [{ key: 'test_accuracy', value: 0.979, step: 0, timestamp: t }, { key: 'test_loss', value: 0.056, step: 0, timestamp: t }] : [];
    emit({
      type: 'stage-end',
      stage,
      status: 'ran',
      fingerprint: stage,
      durationMs: (to - from) * 45_000,
      metrics: [...points, ...test],
      artifacts: stage === 'fine-tune' ? [{ name: 'plots/notes.txt', path: join(files, 'plots', 'notes.txt') }] : [],
      summary: {},
    });
  }
  emit({
    type: 'run-end',
    endedAt: t + 1000,
    summary: {
      runId: start.runId,
      pipeline: 'cats-dogs',
      status: 'succeeded',
      durationMs: t + 1000 - t0,
      stages: [
        { name: 'data', kind: 'fetch', status: 'cached', durationMs: 40, fingerprint: 'a', reasons: [], summary: {} },
        { name: 'train-head', kind: 'train-head', status: 'ran', durationMs: 450_000, fingerprint: 'b', reasons: ['params changed: lr'], summary: {} },
        { name: 'fine-tune', kind: 'fine-tune', status: 'ran', durationMs: 495_000, fingerprint: 'c', reasons: ['upstream train-head ran'], summary: {} },
      ],
      metrics: { 'fine-tune.test_accuracy': 0.979, 'fine-tune.test_loss': 0.056 },
    },
  });
  const result = await tracker.close();
  const runId = result.runs[0]?.runId;
  if (runId === undefined || result.pending > 0) throw new Error(`ui-screenshot: the demo run was not recorded (${result.pending} pending)`);
  console.log(`recorded run ${runId}`);
  return runId;
}

async function look(runUrl: string, runName: string, outDir: string): Promise<void> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'pipe-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env['CHROMIUM'] ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1600, height: 1000 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));

    console.log(`\nopening ${runUrl}`);
    // Not 'networkidle': the UI keeps a telemetry worker request open for good.
    await page.goto(runUrl, { waitUntil: 'domcontentloaded', timeout: 120_000 });
    await page.getByRole('tab', { name: 'Model metrics' }).waitFor({ timeout: 120_000 });
    await page.getByText(runName, { exact: true }).first().waitFor({ timeout: 120_000 });
    // Room for the run: close the assistant panel MLflow 3 opens on first load; classic ML mode.
    await page.getByRole('button', { name: 'Close', exact: true }).first().click({ timeout: 5000 }).catch(() => undefined);
    // (Switching to "Model training" lands on the experiment's run list: come back to the run.)
    await page.getByText('Model training', { exact: true }).first().click({ timeout: 5000 }).catch(() => undefined);
    await page.waitForTimeout(1000);
    await page.goto(runUrl, { waitUntil: 'domcontentloaded', timeout: 120_000 });
    await page.getByRole('tab', { name: 'Model metrics' }).waitFor({ timeout: 120_000 });
    await settle(page);
    await page.screenshot({ path: join(outDir, 'run-overview.png'), fullPage: true });
    console.log(`overview: ${join(outDir, 'run-overview.png')}`);
    report(await page.evaluate(() => document.body.innerText), [runName, 'Finished', 'pipeline_hash', 'fine-tune', 'from the cache']);

    // The app scrolls inside its own container, so a full-page shot is one viewport: make it tall
    // enough for every chart (they render lazily, when visible).
    await page.setViewportSize({ width: 1600, height: 2400 });
    await page.getByRole('tab', { name: 'Model metrics' }).click();
    await page.waitForSelector('.js-plotly-plot', { timeout: 60_000 }).catch(() => undefined);
    await settle(page);
    await page.screenshot({ path: join(outDir, 'run-model-metrics.png'), fullPage: true });
    console.log(`\ncharts (${page.url()}): ${join(outDir, 'run-model-metrics.png')}`);
    const charts = await page.evaluate(() =>
      [...document.querySelectorAll('.js-plotly-plot')].map((plot) => {
        let title = '';
        for (let el: HTMLElement | null = plot as HTMLElement, i = 0; el !== null && i < 8 && title === ''; i++, el = el.parentElement) {
          const first = (el.innerText ?? '').split('\n')[0]?.trim() ?? '';
          if (first !== '' && Number.isNaN(Number(first))) title = first;
        }
        const lines = [...plot.querySelectorAll('.scatterlayer .trace path.js-line')];
        return {
          title,
          lines: lines.length,
          vertices: lines.map((l) => ((l.getAttribute('d') ?? '').match(/[ML]/g) ?? []).length),
          markers: plot.querySelectorAll('.scatterlayer .trace .points path').length,
        };
      }),
    );
    console.log(`${charts.length} metric chart(s) drawn:`);
    for (const c of charts) console.log(`  - ${c.title || '(untitled)'}: ${c.lines} line(s) through ${c.vertices.join('/') || 0} point(s), ${c.markers} marker(s)`);
    report(await page.evaluate(() => document.body.innerText), ['loss', 'accuracy', 'val_loss', 'val_accuracy', 'test_accuracy']);
    if (errors.length > 0) console.log(`page errors: ${errors.slice(0, 5).join(' | ')}`);
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function settle(page: Page): Promise<void> {
  await page.waitForTimeout(3000);
}

function report(text: string, expected: string[]): void {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  console.log(`page text (${lines.length} lines), first ones: ${lines.slice(0, 25).join(' · ')}`);
  console.log(`contains: ${expected.map((w) => `${w} ${text.includes(w) ? 'yes' : 'NO'}`).join(', ')}`);
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error((error as Error).stack ?? error);
    process.exit(1);
  },
);
