// `pipe gc` and what crashed or killed processes leave in the cache: stale locks and temporary
// directories are listed (--dry-run) and removed; those of live processes are left alone. Cache
// bytes per stage in the run summary and `pipe status`; `gc --max-size` removes the least recently
// used entries, never one a running stage holds, and counts hard-linked files once.
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execa } from 'execa';
import { pipe, project } from '../helpers/cli.ts';
import { writeImageFolder } from '../helpers/images.ts';
import type { RunSummary } from '../../src/core/events.ts';

const text = 'name: tidy\nstages:\n  one:\n    run: "echo 1 > one.txt"\n    outs: [one.txt]\n';
const hostTag = os.hostname().replace(/[^A-Za-z0-9-]/g, '-') || 'host';
const fp = (c: string) => c.repeat(64);

test('gc lists and removes stale locks and temporary directories, never those of live processes', async () => {
  const dir = project({ 'p.yaml': text });
  assert.is((await pipe(dir, ['run', 'p.yaml'])).exitCode, 0);
  const exited = execa('true');
  const dead = exited.pid!; // a process that has exited
  await exited;
  const live = execa('sleep', ['120']);
  try {
    const cache = path.join(dir, 'runs', 'cache');
    const lock = (name: string, holder: object, ageMs = 0) => {
      const file = path.join(cache, 'locks', name);
      writeFileSync(file, JSON.stringify(holder));
      const when = new Date(Date.now() - ageMs);
      utimesSync(file, when, when);
    };
    const tmp = (name: string) => mkdirSync(path.join(cache, 'tmp', name, 'out'), { recursive: true });
    mkdirSync(path.join(cache, 'locks'), { recursive: true });
    lock(`${fp('a')}.lock`, { pid: dead, host: os.hostname(), since: Date.now() });
    lock(`${fp('b')}.lock`, { pid: live.pid, host: os.hostname(), since: Date.now() });
    lock(`${fp('c')}.lock`, { pid: 1234, host: 'elsewhere', since: 0 }, 3_600_000);
    lock(`${fp('d')}.lock`, { pid: 1234, host: 'elsewhere', since: Date.now() });
    tmp(`${fp('e')}.${dead}.0a0b0c0d.${hostTag}`);
    tmp(`${fp('f')}.${live.pid}.0a0b0c0d.${hostTag}`);
    tmp(`${fp('g')}.gc.${dead}.0a0b0c0d`);

    const stale = [`locks/${fp('a')}.lock`, `locks/${fp('c')}.lock`, `tmp/${fp('e')}.${dead}.0a0b0c0d.${hostTag}`, `tmp/${fp('g')}.gc.${dead}.0a0b0c0d`];
    const kept = [`locks/${fp('b')}.lock`, `locks/${fp('d')}.lock`, `tmp/${fp('f')}.${live.pid}.0a0b0c0d.${hostTag}`];
    const dry = await pipe(dir, ['gc', 'p.yaml', '--dry-run']);
    assert.is(dry.exitCode, 0, dry.stderr);
    assert.match(dry.stdout, new RegExp(`^would remove stale lock locks/${fp('a')}\\.lock  \\(process ${dead} is gone\\)$`, 'm'));
    assert.match(dry.stdout, new RegExp(`^would remove stale lock locks/${fp('c')}\\.lock  \\(written on elsewhere, untouched for 60 min\\)$`, 'm'));
    for (const name of stale) assert.ok(dry.stdout.includes(` ${name}  (`), `${name} not listed:\n${dry.stdout}`);
    for (const name of kept) assert.not.ok(dry.stdout.includes(name), `${name} is in use:\n${dry.stdout}`);
    assert.match(dry.stdout, /would remove 2 stale locks and 2 abandoned temporary directories/);
    for (const name of [...stale, ...kept]) assert.ok(existsSync(path.join(cache, name)), `--dry-run removed ${name}`);

    const gc = await pipe(dir, ['gc', 'p.yaml']);
    assert.is(gc.exitCode, 0, gc.stderr);
    assert.match(gc.stdout, /removed 2 stale locks and 2 abandoned temporary directories/);
    for (const name of stale) assert.not.ok(existsSync(path.join(cache, name)), `${name} is still there`);
    for (const name of kept) assert.ok(existsSync(path.join(cache, name)), `${name} was removed`);
  } finally {
    live.kill();
    await live.catch(() => undefined);
  }
});

const KB400 = 409_600;
const threeStages = `name: sizes
stages:
${['a', 'b', 'c'].map((n) => `  ${n}:\n    run: "head -c ${KB400} /dev/zero > ${n}.bin"\n    outs: [${n}.bin]\n`).join('')}`;

test('cache bytes per stage in the run summary and pipe status (text and --json)', async () => {
  const dir = project({ 'p.yaml': threeStages });
  const run = await pipe(dir, ['run', 'p.yaml', '--json', '--no-track']);
  assert.is(run.exitCode, 0, run.stderr);
  const summary = JSON.parse(run.stdout) as RunSummary;
  for (const stage of summary.stages) {
    // the 400 KB output plus the entry's records, log and metrics
    assert.ok(stage.cacheBytes! > KB400 && stage.cacheBytes! < KB400 + 20_000, `${stage.name}: ${stage.cacheBytes}`);
    assert.is(stage.cacheLinkedBytes, 0);
  }
  assert.is(summary.cacheBytes, summary.stages.reduce((sum, s) => sum + s.cacheBytes!, 0));
  assert.match(run.stderr, /^stage\s+status\s+time\s+cache\s+fingerprint$/m);
  assert.match(run.stderr, /^a\s+ran\s+.+?\s+40\d\.\d KB\s+[0-9a-f]+$/m);
  assert.match(run.stderr, /succeeded in .*: 3 ran, 0 cached, 0 failed, 0 skipped; 1\.2 MB in the cache/);

  const status = await pipe(dir, ['status', 'p.yaml', '--json']);
  const plan = JSON.parse(status.stdout) as { stages: Array<{ name: string; cacheBytes: number }>; cacheBytes: number };
  assert.equal(plan.stages.map((s) => s.cacheBytes), summary.stages.map((s) => s.cacheBytes));
  assert.is(plan.cacheBytes, summary.cacheBytes);
  const text = await pipe(dir, ['status', 'p.yaml']);
  assert.match(text.stdout, /^b\s+cached\s+[0-9a-f]+\s+40\d\.\d KB$/m);
  assert.match(text.stdout, /up to date: every stage is cached; the cached stages take 1\.2 MB in the cache/);

  // status does not count as a use of an entry; a run that restores it does (least recently used first)
  const entryDir = path.join(dir, 'runs', 'cache', 'entries', summary.stages[0]!.fingerprint);
  const old = new Date(Date.now() - 3_600_000);
  utimesSync(entryDir, old, old);
  await pipe(dir, ['status', 'p.yaml']);
  assert.ok(statSync(entryDir).mtimeMs < Date.now() - 3_000_000);
  const again = await pipe(dir, ['run', 'p.yaml', '--no-track']);
  assert.match(again.stderr, /3 cached/);
  assert.ok(statSync(entryDir).mtimeMs > Date.now() - 60_000, 'restoring the entry marks it used');
});

test('gc --max-size removes the least recently used entries first, never one a running stage holds', async () => {
  const dir = project({ 'p.yaml': threeStages });
  const run = await pipe(dir, ['run', 'p.yaml', '--json', '--no-track']);
  assert.is(run.exitCode, 0, run.stderr);
  const fps = Object.fromEntries((JSON.parse(run.stdout) as RunSummary).stages.map((s) => [s.name, s.fingerprint]));
  const cache = path.join(dir, 'runs', 'cache');
  const entry = (name: string) => path.join(cache, 'entries', fps[name]!);
  // last used: a three hours ago, b two, c one
  for (const [name, hours] of [['a', 3], ['b', 2], ['c', 1]] as const) {
    const when = new Date(Date.now() - hours * 3_600_000);
    utimesSync(entry(name), when, when);
  }
  // a running stage (this live process) reads a
  const use = path.join(cache, 'locks', `${fps['a']}.use.${process.pid}.0a0b0c0d`);
  writeFileSync(use, JSON.stringify({ pid: process.pid, host: os.hostname(), since: Date.now() }));

  const bad = await pipe(dir, ['gc', 'p.yaml', '--max-size', 'lots']);
  assert.is(bad.exitCode, 2);
  assert.match(bad.stderr, /--max-size lots: expected a size such as 50GB, 500MB or 1\.5TB/);

  const dry = await pipe(dir, ['gc', 'p.yaml', '--max-size', '900KB', '--dry-run']);
  assert.is(dry.exitCode, 0, dry.stderr);
  assert.match(dry.stdout, new RegExp(`^would remove ${fps['b']!.slice(0, 10)}  command\\s+40\\d\\.\\d KB  \\(over --max-size; last used `, 'm'));
  assert.ok(existsSync(entry('b')));

  const gc = await pipe(dir, ['gc', 'p.yaml', '--max-size', '900KB']);
  assert.is(gc.exitCode, 0, gc.stderr);
  assert.ok(existsSync(entry('a')), 'held by a running stage');
  assert.not.ok(existsSync(entry('b')), 'the least recently used that is not held');
  assert.ok(existsSync(entry('c')), 'within the budget once b is gone');
  assert.match(gc.stdout, /removed 1 \(40\d\.\d KB\), kept 2 \(80\d\.\d KB\)/);
  assert.match(gc.stdout, /left 1 entry alone that running stages hold/);

  // a use file of a process that is gone holds nothing (and is removed as a stale lock)
  writeFileSync(use, JSON.stringify({ pid: 999_999_999, host: os.hostname(), since: 0 }));
  const again = await pipe(dir, ['gc', 'p.yaml', '--max-size', '500K']);
  assert.is(again.exitCode, 0, again.stderr);
  assert.not.ok(existsSync(entry('a')));
  assert.ok(existsSync(entry('c')));
  assert.not.ok(existsSync(use));
  // b and a recomputed, c restored: a run after gc is whole again
  const rerun = await pipe(dir, ['run', 'p.yaml', '--json', '--no-track']);
  assert.equal((JSON.parse(rerun.stdout) as RunSummary).stages.map((s) => s.status), ['ran', 'ran', 'cached']);
});

test('split links the fetched pixels: counted once, and the split entry outlives the fetch entry', async () => {
  const dir = project({
    'p.yaml': 'name: data\nstages:\n  fetch: {kind: fetch, with: {source: ./images, image_size: [32, 32]}}\n  split: {kind: split, needs: [fetch], with: {validation_fraction: 0.25, test_fraction: 0.25}}\n',
  });
  await writeImageFolder(path.join(dir, 'images'), { classes: { cats: 8, dogs: 8 }, height: 40, width: 40 });
  const run = await pipe(dir, ['run', 'p.yaml', '--json', '--no-track']);
  assert.is(run.exitCode, 0, run.stderr);
  const summary = JSON.parse(run.stdout) as RunSummary;
  const [fetch, split] = summary.stages;
  const pixels = 16 * 32 * 32 * 3;
  const splitOut = path.join(dir, 'runs', 'cache', 'entries', split!.fingerprint, 'out');
  assert.is(statSync(path.join(splitOut, 'fetched-all.u8')).size, pixels);
  assert.is(split!.cacheLinkedBytes, pixels);
  assert.is(fetch!.cacheLinkedBytes, pixels);
  assert.ok(split!.cacheBytes! < pixels + 20_000, 'the split entry holds no copy of the pixels beyond the link');
  assert.is(summary.cacheBytes, fetch!.cacheBytes! + split!.cacheBytes! - pixels);

  // fetch is the least recently used: a budget below both removes it and keeps split
  const old = new Date(Date.now() - 3_600_000);
  utimesSync(path.join(dir, 'runs', 'cache', 'entries', fetch!.fingerprint), old, old);
  const budget = split!.cacheBytes! + 100;
  const gc = await pipe(dir, ['gc', 'p.yaml', '--max-size', String(budget)]);
  assert.is(gc.exitCode, 0, gc.stderr);
  // removing fetch frees only its own files: the pixels stay, linked from split
  assert.match(gc.stdout, new RegExp(`^removed ${fetch!.fingerprint.slice(0, 10)}  fetch\\s+\\d+(\\.\\d)? KB  \\(over --max-size`, 'm'));
  assert.not.ok(existsSync(path.join(dir, 'runs', 'cache', 'entries', fetch!.fingerprint)));
  const meta = JSON.parse(readFileSync(path.join(splitOut, 'train.json'), 'utf8')) as { indexed: { file: string } };
  assert.is(meta.indexed.file, 'fetched-all.u8');
  assert.is(statSync(path.join(splitOut, 'fetched-all.u8')).nlink, 1);
  // split is still cached and intact (its checksums hold): only fetch runs again
  rmSync(path.join(dir, 'runs', 'cache', 'entries', split!.fingerprint, 'verified.json'), { force: true });
  const rerun = await pipe(dir, ['run', 'p.yaml', '--json', '--no-track']);
  assert.is(rerun.exitCode, 0, rerun.stderr);
  assert.equal((JSON.parse(rerun.stdout) as RunSummary).stages.map((s) => s.status), ['ran', 'cached']);
  assert.not.match(rerun.stderr, /damaged/);
});

test('gc keeps a kept stage’s pruned results and training checkpoints, and removes the others', async () => {
  const dir = project({ 'p.yaml': text });
  assert.is((await pipe(dir, ['run', 'p.yaml'])).exitCode, 0);
  const status = JSON.parse((await pipe(dir, ['status', 'p.yaml', '--json'])).stdout) as { stages: Array<{ name: string; fingerprint: string }> };
  const one = status.stages.find((s) => s.name === 'one')?.fingerprint ?? '';
  assert.is(one.length, 64);
  const cache = path.join(dir, 'runs', 'cache');
  const made = [`entries/${one}.pruned-2/out`, `entries/${fp('9')}.pruned-1/out`, `checkpoints/${one}/epoch-2`, `checkpoints/${fp('8')}/epoch-1`];
  for (const d of made) mkdirSync(path.join(cache, d), { recursive: true });
  writeFileSync(path.join(cache, 'checkpoints', fp('8'), 'epoch-1', 'tensors.bin'), Buffer.alloc(1000));
  const gc = await pipe(dir, ['gc', 'p.yaml']);
  assert.is(gc.exitCode, 0, gc.stderr);
  assert.match(gc.stdout, new RegExp(`^removed checkpoints of ${fp('8').slice(0, 10)}  1000 B$`, 'm'));
  for (const kept of [`entries/${one}`, `entries/${one}.pruned-2`, `checkpoints/${one}/epoch-2`]) assert.ok(existsSync(path.join(cache, kept)), `${kept} was removed`);
  for (const gone of [`entries/${fp('9')}.pruned-1`, `checkpoints/${fp('8')}`]) assert.not.ok(existsSync(path.join(cache, gone)), `${gone} is still there`);
});

test.run();
