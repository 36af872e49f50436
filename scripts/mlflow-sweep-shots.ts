// Screenshots of a sweep as MLflow shows it, in headless Chromium: the parent run (the search space
// and scheduler as params, the early-stopping line of its description), its curves.png artifact
// (every trial's watched metric per epoch, pruning points marked) and MLflow's compare view of its
// child runs (parallel coordinates over the sampled params).
//
//   npx tsx scripts/mlflow-sweep-shots.ts [--project DIR] [--uri URL] [--experiment NAME] [--out DIR]
//
// The server: --uri, else the one `pipe` started for the project (DIR/runs/mlflow/server.json). The
// sweep: the newest parent run (tag pipe.sweep) of the experiment (default: cats-vs-dogs, the
// flagship's).

import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { MLflowClient } from '../src/tracking/mlflow-client.ts';
import type { Page } from 'playwright-core';
import { open, prepare, shot, withBrowserPage } from './mlflow-browser.ts';

const { values: args } = parseArgs({
  options: { project: { type: 'string', default: '.' }, uri: { type: 'string' }, experiment: { type: 'string', default: 'cats-vs-dogs' }, out: { type: 'string', default: '/tmp/sweep-shots' } },
});

async function main(): Promise<void> {
  const uri = args.uri ?? (JSON.parse(readFileSync(join(resolve(args.project!), 'runs', 'mlflow', 'server.json'), 'utf8')) as { uri: string }).uri;
  const client = new MLflowClient({ uri });
  const experiment = await client.getExperimentByName(args.experiment!);
  if (experiment) {
    const parents = (await client.searchRuns({ experimentIds: [experiment.experiment_id], filter: "tags.`pipe.sweep` LIKE 'sweep-%'", orderBy: ['attributes.start_time DESC'] })).runs;
    const parent = parents.find((r) => !r.data.tags?.some((t) => t.key === 'mlflow.parentRunId'));
    if (!parent) throw new Error(`no sweep parent run in experiment ${args.experiment} on ${uri}`);
    const outDir = resolve(args.out!);
    mkdirSync(outDir, { recursive: true });
    const exp = experiment.experiment_id;
    const runUrl = `${uri}/#/experiments/${exp}/runs/${parent.info.run_id}`;
    // The tag's link is relative to the server (`#/compare-runs?…`); older sweeps stored the full URL
    // of the server that recorded them, whose port an embedded server changes at each start.
    const tagged = parent.data.tags?.find((t) => t.key === 'pipe.compare_url')?.value ?? '';
    const compare = tagged.includes('#') ? `${uri}/#${tagged.split('#')[1]}` : '';
    console.log(`sweep ${parent.info.run_name} (${parent.info.run_id}) in experiment ${experiment.name}: ${runUrl}`);
    await withBrowserPage(async (page) => {
      await page.setViewportSize({ width: 1600, height: 1600 });
      await prepare(page, runUrl, parent.info.run_name ?? 'Overview');
      await open(page, runUrl, 'Overview');
      await shot(page, outDir, 'sweep-parent', ['sweep.space.', 'sweep.scheduler.', 'stopped early']);
      await open(page, `${runUrl}/artifacts/curves.png`, 'curves.png');
      await shot(page, outDir, 'sweep-parent-curves', ['curves.png', 'trials.json']);
      if (compare !== '') {
        await page.setViewportSize({ width: 1600, height: 2000 });
        await open(page, compare, 'Parallel Coordinates Plot');
        await showMetric(page, 'val_accuracy');
        await shot(page, outDir, 'sweep-compare-children', ['fine_tune_learning_rate', 'fine_tune_at']);
      }
    });
    return;
  }
  throw new Error(`no sweep parent run on ${uri} in experiment ${args.experiment}`);
}

/** The compare view's parallel coordinates colour by the first metric: choose `metric` instead. */
async function showMetric(page: Page, metric: string): Promise<void> {
  try {
    const select = page.getByText('Metrics:', { exact: true }).locator('xpath=following-sibling::*[1]');
    // remove the metrics chosen (each chip's ×), then type `metric` and take its option
    for (let i = 0; i < 5; i++) {
      const remove = select.locator('[aria-label="close"], [class*="remove"], [class*="close"]').first();
      if (!(await remove.isVisible({ timeout: 1000 }).catch(() => false))) break;
      await remove.click();
    }
    const input = select.locator('input').first();
    await input.click();
    await input.fill(metric);
    await page.locator(`[class*="select-item-option"][title="${metric}"]`).first().click({ timeout: 5000 });
    await page.keyboard.press('Escape');
    await page.waitForTimeout(3000);
  } catch (error) {
    console.log(`(could not choose the metric ${metric}: ${(error as Error).message.split('\n')[0]})`);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error((error as Error).stack ?? error);
    process.exit(1);
  },
);
