// Renders a benchmark result again (after the report format changed, or to publish it):
//
//   npx tsx bench/render.ts bench/results/<date>.json            rewrites <date>.md (and latest.md if it is the newest)
//   npx tsx bench/render.ts bench/results/<date>.json --readme   also puts its table into bench/README.md's "## Latest results"
//                                                                 and a short one into README.md's "Current figures"
//   npx tsx bench/render.ts bench/results/<date>.json --note NOTE.md   stores a closing note (markdown) in the JSON first
//
// A scale result (`npm run bench -- --scale`, <date>-scale.json) is rendered the same way, with its
// own report (bench/scale-report.ts): latest-scale.md, and with --readme bench/README.md's text
// between <!-- bench-scale:start --> and <!-- bench-scale:end --> (README.md is not touched).
//
// bench/README.md: only the text between the markers <!-- bench:start --> and <!-- bench:end --> is
// replaced; without them a "## Benchmarks" section holding them is added before "## Tests" (or at
// the end). The top-level README.md shows a short table of it between <!-- bench-summary:start -->
// and <!-- bench-summary:end -->.

import { existsSync } from 'node:fs';
import { copyFile, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { renderMarkdown, renderReadmeSection, renderSummary, withTargets, type BenchResult } from './report.ts';
import { isScaleResult, renderScaleMarkdown, renderScaleReadmeSection, withScaleTargets, type ScaleResult } from './scale-report.ts';

const root = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const START = '<!-- bench:start -->';
const END = '<!-- bench:end -->';
const SUMMARY_START = '<!-- bench-summary:start -->';
const SUMMARY_END = '<!-- bench-summary:end -->';
const SCALE_START = '<!-- bench-scale:start -->';
const SCALE_END = '<!-- bench-scale:end -->';

/** bench/README.md with `section` between its scale markers, or undefined when it has none. */
export function spliceScale(readme: string, section: string): string | undefined {
  const start = readme.indexOf(SCALE_START);
  const end = readme.indexOf(SCALE_END);
  if (start < 0 || end < start) return undefined;
  return `${readme.slice(0, start)}${SCALE_START}\n${section.trim()}\n${readme.slice(end)}`;
}

/** A scale result: its markdown, latest-scale.md when it is the newest, and with `readme` its section in bench/README.md. */
async function renderScale(file: string, raw: ScaleResult, options: { note?: string; readme?: boolean }): Promise<void> {
  const result = withScaleTargets(raw);
  if (options.note !== undefined) {
    result.closingNote = (await readFile(options.note, 'utf8')).trim();
    await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
  }
  const md = file.replace(/\.json$/, '.md');
  await writeFile(md, renderScaleMarkdown(result));
  const dir = path.dirname(file);
  const newest = (await readdir(dir)).filter((n) => /^\d{8}T\d{6}Z-scale\.json$/.test(n)).sort().pop();
  if (newest === path.basename(file)) await copyFile(md, path.join(dir, 'latest-scale.md'));
  process.stdout.write(`wrote ${md}${newest === path.basename(file) ? ' and latest-scale.md' : ''}\n`);
  if (!options.readme) return;
  const readmePath = path.join(root, 'bench', 'README.md');
  const link = path.relative(path.dirname(readmePath), path.resolve(md));
  const updated = spliceScale(await readFile(readmePath, 'utf8'), renderScaleReadmeSection(result, link));
  if (updated === undefined) process.stdout.write(`bench/README.md has no ${SCALE_START} … ${SCALE_END} markers: not updated\n`);
  else {
    await writeFile(readmePath, updated);
    process.stdout.write(`updated bench/README.md (the scale section, from ${link})\n`);
  }
}

/** README.md with `summary` between its summary markers, or undefined when it has none. */
export function spliceSummary(readme: string, summary: string): string | undefined {
  const start = readme.indexOf(SUMMARY_START);
  const end = readme.indexOf(SUMMARY_END);
  if (start < 0 || end < start) return undefined;
  return `${readme.slice(0, start)}${SUMMARY_START}\n${summary.trim()}\n${readme.slice(end)}`;
}

/** README text with `section` between the markers (added as "## Benchmarks" before `## Tests` when missing). */
export function spliceReadme(readme: string, section: string): string {
  const block = `${START}\n${section.trim()}\n${END}`;
  const start = readme.indexOf(START);
  const end = readme.indexOf(END);
  if (start >= 0 && end > start) return readme.slice(0, start) + block + readme.slice(end + END.length);
  const heading = `## Benchmarks\n\n\`npm run bench\` runs pipe and the Keras code of the recipe one after the other on this machine, from the same data folder and weights file (see [bench/README.md](bench/README.md)).\n\n${block}\n\n`;
  const tests = readme.search(/^## Tests$/m);
  return tests >= 0 ? readme.slice(0, tests) + heading + readme.slice(tests) : `${readme.trimEnd()}\n\n${heading}`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { positionals, values } = parseArgs({ options: { readme: { type: 'boolean' }, note: { type: 'string' } }, allowPositionals: true, strict: true });
  const file = positionals[0];
  if (positionals.length !== 1 || file === undefined || !existsSync(file)) {
    process.stderr.write('usage: npx tsx bench/render.ts RESULT.json [--note NOTE.md] [--readme]\n');
    process.exit(2);
  }
  const parsed = JSON.parse(await readFile(file, 'utf8')) as BenchResult | ScaleResult;
  if (isScaleResult(parsed)) {
    await renderScale(file, parsed as ScaleResult, values);
    process.exit(0);
  }
  const result = withTargets(parsed as BenchResult);
  if (values.note !== undefined) {
    result.closingNote = (await readFile(values.note, 'utf8')).trim();
    await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
  }
  const md = file.replace(/\.json$/, '.md');
  await writeFile(md, renderMarkdown(result));
  const dir = path.dirname(file);
  const newest = (await readdir(dir)).filter((n) => /^\d{8}T\d{6}Z\.json$/.test(n)).sort().pop();
  if (newest === path.basename(file)) await copyFile(md, path.join(dir, 'latest.md'));
  process.stdout.write(`wrote ${md}${newest === path.basename(file) ? ' and latest.md' : ''}\n`);
  if (values.readme) {
    const readmePath = path.join(root, 'bench', 'README.md');
    // the link is relative to bench/README.md, where the section goes
    const link = path.relative(path.dirname(readmePath), path.resolve(md));
    await writeFile(readmePath, spliceReadme(await readFile(readmePath, 'utf8'), renderReadmeSection(result, link)));
    process.stdout.write(`updated bench/README.md (Latest results, from ${link})\n`);
    const topPath = path.join(root, 'README.md');
    const top = spliceSummary(await readFile(topPath, 'utf8'), renderSummary(result, 'bench/README.md'));
    if (top === undefined) process.stdout.write(`README.md has no ${SUMMARY_START} … ${SUMMARY_END} markers: its short table was not updated\n`);
    else {
      await writeFile(topPath, top);
      process.stdout.write('updated README.md (Current figures)\n');
    }
  }
}
