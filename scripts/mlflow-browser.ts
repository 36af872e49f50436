// Headless Chromium on MLflow's UI, for the screenshot scripts (mlflow-showcase.ts,
// mlflow-sweep-shots.ts): open a page and wait for its content, click a tab, and save a
// screenshot while saying which of the expected words the page shows.
//
// Needs: Debian's chromium (or CHROMIUM=path), playwright-core.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Page } from 'playwright-core';

/** Runs `use` with a page of a throwaway headless Chromium profile (1600×1100). */
export async function withBrowserPage(use: (page: Page) => Promise<void>): Promise<void> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'pipe-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env['CHROMIUM'] ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1600, height: 1100 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    await use(context.pages()[0] ?? (await context.newPage()));
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

/**
 * Opens `url` once and puts MLflow's UI as a training user sees it: the assistant panel closed,
 * the "Model training" side of the navigation chosen.
 */
export async function prepare(page: Page, url: string, waitFor: string): Promise<void> {
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120_000 });
  await page.getByText(waitFor, { exact: true }).first().waitFor({ timeout: 120_000 });
  await page.getByRole('button', { name: 'Close', exact: true }).first().click({ timeout: 5000 }).catch(() => undefined);
  await page.getByText('Model training', { exact: true }).first().click({ timeout: 5000 }).catch(() => undefined);
  await page.waitForTimeout(1000);
}

/** Opens `url` and waits for `waitFor` to show (MLflow renders after loading), then a little more. */
export async function open(page: Page, url: string, waitFor: string): Promise<void> {
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120_000 });
  await page.getByText(waitFor).first().waitFor({ timeout: 60_000 }).catch(() => console.log(`(no "${waitFor}" on ${url})`));
  await page.waitForTimeout(4000);
}

/** Clicks the tab `name` and waits for its charts. */
export async function tab(page: Page, name: string): Promise<void> {
  await page.getByRole('tab', { name }).click({ timeout: 30_000 }).catch(() => page.getByText(name, { exact: true }).first().click());
  await page.waitForSelector('.js-plotly-plot', { timeout: 30_000 }).catch(() => undefined);
  await page.waitForTimeout(5000);
}

/** Saves a full-page screenshot `outDir/name.png` and prints which `expected` words the page shows. */
export async function shot(page: Page, outDir: string, name: string, expected: string[]): Promise<void> {
  const file = join(outDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const text = await page.evaluate(() => document.body.innerText);
  console.log(`${file}: ${expected.map((w) => `${w} ${text.includes(w) ? 'yes' : 'NO'}`).join(', ')}`);
}
