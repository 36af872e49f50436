// What an MLflow user sees of pipe, in a real browser: a throwaway MLflow server from .venv, the small
// learning pipeline (test/helpers/small-pipeline.ts) run through the real CLI on real photos from
// ../shared/data (registered with an alias, system metrics every 2 s), a sweep of it, a
// `pipe predict models:/…@champion` on a real photo, then headless Chromium screenshots of the run
// overview (datasets, logged model), its model metrics, its system metrics, the logged model, the
// registered model's version page and the compare view of the sweep's trials.
//
//   npx tsx scripts/mlflow-showcase.ts [--out /tmp/shots] [--photos 40]
//
// Needs: Debian's chromium (or CHROMIUM=path), playwright-core (scripts/mlflow-browser.ts).

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MLflowClient } from '../src/tracking/mlflow-client.ts';
import { open, prepare, shot, tab, withBrowserPage } from './mlflow-browser.ts';
import { freePort, killGroup, spawnMlflowServer, waitForHealth } from '../src/tracking/server.ts';
import { smallPipeline } from '../test/helpers/small-pipeline.ts';

const repoDir = resolve(fileURLToPath(import.meta.url), '..', '..');
const photosDir = resolve(repoDir, '..', 'shared', 'data', 'cats_and_dogs', 'train');
const { values: args } = parseArgs({ options: { out: { type: 'string', default: '/tmp/shots' }, photos: { type: 'string', default: '40' } } });

async function main(): Promise<void> {
  const outDir = resolve(args.out!);
  mkdirSync(outDir, { recursive: true });
  const scratch = mkdtempSync(join(tmpdir(), 'pipe-showcase-'));
  const port = await freePort();
  const uri = `http://127.0.0.1:${port}`;
  const logFile = join(scratch, 'server.log');
  const server = spawnMlflowServer({ mlflowBin: join(repoDir, '.venv', 'bin', 'mlflow'), storeDir: join(scratch, 'mlflow'), host: '127.0.0.1', port, logFile, detached: true });
  try {
    await waitForHealth(uri, { child: server, timeoutMs: 180_000, logFile });
    const project = join(scratch, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'small.yaml'), smallPipeline.replace('experiment: small-e2e', 'experiment: cats-vs-dogs'));
    for (const cls of ['cats', 'dogs']) {
      mkdirSync(join(project, 'images', cls), { recursive: true });
      const photos = readdirSync(join(photosDir, cls)).sort().slice(0, Number(args.photos));
      for (const p of photos) copyFileSync(join(photosDir, cls, p), join(project, 'images', cls, p));
    }
    const env = { ...process.env, MLFLOW_TRACKING_URI: uri, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL: '2', PIPE_NO_TRACK: '0', CI: '1' };
    const pipe = (...a: string[]) => {
      console.log(`$ pipe ${a.join(' ')}`);
      const out = execFileSync(process.execPath, [join(repoDir, 'bin', 'pipe.js'), ...a], { cwd: project, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
      console.log(out.trim().split('\n').slice(0, 12).join('\n'));
      return out;
    };
    const summary = JSON.parse(pipe('run', 'small.yaml', '--register', 'cats-vs-dogs', '--alias', 'champion', '--json')) as { runId: string };
    pipe('predict', 'models:/cats-vs-dogs@champion', join(photosDir, 'cats', 'cat.999.jpg'), join(photosDir, 'dogs', 'dog.999.jpg'));
    pipe('sweep', 'small.yaml', '-S', 'fine_tune_at=100,120', '--objective', 'val_accuracy', '--json');

    const client = new MLflowClient({ uri });
    const exp = (await client.getExperimentByName('cats-vs-dogs'))!.experiment_id;
    const runs = (await client.searchRuns({ experimentIds: [exp], filter: `tags.\`pipe.run_id\` = '${summary.runId}'` })).runs;
    const run = runs[0]!;
    const version = await client.getModelVersionByAlias('cats-vs-dogs', 'champion');
    const modelId = /models:\/(m-[0-9a-f]+)/.exec(version.source)![1]!;
    console.log(`REST: registered-models/alias cats-vs-dogs@champion → version ${version.version}, source ${version.source}, run ${version.run_id}`);
    const parent = (await client.searchRuns({ experimentIds: [exp], filter: "tags.`pipe.sweep` LIKE 'sweep-%'" })).runs[0]!;
    // The tag's link is relative to the server (`#/compare-runs?…`; older sweeps stored a full URL).
    const tagged = parent.data.tags?.find((t) => t.key === 'pipe.compare_url')?.value ?? '';
    const compare = tagged.includes('#') ? `${uri}/#${tagged.split('#')[1]}` : '';

    await screenshots(outDir, {
      run: `${uri}/#/experiments/${exp}/runs/${run.info.run_id}`,
      runName: run.info.run_name ?? '',
      model: `${uri}/#/experiments/${exp}/models/${modelId}`,
      version: `${uri}/#/models/cats-vs-dogs/versions/${version.version}`,
      compare,
    });
  } finally {
    if (server.pid !== undefined) killGroup(server.pid);
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function screenshots(outDir: string, urls: { run: string; runName: string; model: string; version: string; compare: string }): Promise<void> {
  await withBrowserPage(async (page) => {
    await prepare(page, urls.run, urls.runName);

    await open(page, urls.run, 'Overview');
    await shot(page, outDir, 'run-overview', ['Datasets', 'images/train', 'Logged models', 'cats-vs-dogs']);
    await page.setViewportSize({ width: 1600, height: 2200 });
    await tab(page, 'Model metrics');
    await shot(page, outDir, 'run-model-metrics', ['val_loss', 'learning_rate', 'test_accuracy']);
    await tab(page, 'System metrics');
    await shot(page, outDir, 'run-system-metrics', ['cpu_utilization_percentage', 'process_tree_rss_megabytes']);
    await page.setViewportSize({ width: 1600, height: 1100 });
    await open(page, urls.model, 'Overview');
    await shot(page, outDir, 'logged-model', ['test_accuracy', 'Ready']);
    await open(page, urls.version, 'Version');
    await shot(page, outDir, 'registered-model-version', ['champion', 'Source']);
    if (urls.compare !== '') {
      await page.setViewportSize({ width: 1600, height: 2000 });
      await open(page, urls.compare, 'Parallel Coordinates Plot');
      await shot(page, outDir, 'sweep-compare', ['fine_tune_at', 'val_accuracy']);
    }
  });
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error((error as Error).stack ?? error);
    process.exit(1);
  },
);
