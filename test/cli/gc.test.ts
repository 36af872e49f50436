// `pipe gc` and what crashed or killed processes leave in the cache: stale locks and temporary
// directories are listed (--dry-run) and removed; those of live processes are left alone.
import { existsSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execa } from 'execa';
import { pipe, project } from '../helpers/cli.ts';

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
