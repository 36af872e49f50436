// The artifact cache on real directories: entries appear complete or not at all, the lock lets
// one process compute an entry and is taken over from a dead or silent holder, and what killed
// writers leave behind is cleaned; entries a running stage reads are held, and their sizes count a
// shared (hard-linked) file once.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cache, LOCK_LEASE_MS, type EntryResult, type LockInfo } from '../../src/cache/cache.ts';
import type { FingerprintRecord } from '../../src/cache/fingerprint.ts';

const fp = (n: number) => `${String(n).repeat(4)}${'ab'.repeat(30)}`;
const record = (n: number): FingerprintRecord => ({ schema: 1, kind: 'command', version: 0, params: { n }, command: `echo ${n}`, inputs: {}, upstream: {} });
const result = (durationMs: number): EntryResult => ({ durationMs, finishedAt: 1_700_000_000_000, summary: { rows: 3 }, artifacts: ['model.txt'], outs: { 'model.txt': 'h1' } });

function newCache(): Cache {
  return new Cache(mkdtempSync(path.join(os.tmpdir(), 'pipe-cache-')));
}

/** A pid that no process has: one that just ended. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '']).pid!;
}

const hostTag = os.hostname().replace(/[^A-Za-z0-9-]/g, '-') || 'host';
const settled = <T>(promise: Promise<T>) => Promise.race([promise.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 600))]);

async function publishOne(cache: Cache, n: number, content: string, durationMs = 10): Promise<void> {
  const staging = await cache.stage(fp(n), record(n));
  writeFileSync(path.join(staging.outDir, 'model.txt'), content);
  await cache.publish(staging, result(durationMs));
}

test('an entry is written privately and appears complete in one step', async () => {
  const cache = newCache();
  const staging = await cache.stage(fp(1), record(1));
  assert.ok(staging.dir.startsWith(path.join(cache.root, 'tmp') + path.sep));
  writeFileSync(path.join(staging.outDir, 'model.txt'), 'weights');
  assert.is(await cache.has(fp(1)), false);
  assert.is(await cache.read(fp(1)), undefined, 'nothing is visible before publishing');

  const entry = await cache.publish(staging, result(1234));
  assert.is(entry.dir, cache.entryDir(fp(1)));
  assert.equal(entry.record, record(1));
  const { checksums, ...recorded } = entry.result;
  assert.equal(recorded, result(1234));
  assert.equal(Object.keys(checksums ?? {}), ['out/model.txt', 'metrics.jsonl'].filter((f) => f in (checksums ?? {})), 'every file is checksummed');
  assert.ok(checksums?.['out/model.txt'], 'the artifact is checksummed');
  assert.is(readFileSync(path.join(entry.outDir, 'model.txt'), 'utf8'), 'weights');
  assert.is(existsSync(staging.dir), false);
  assert.equal(readdirSync(path.join(cache.root, 'tmp')), []);

  const read = await cache.read(fp(1));
  assert.equal([read?.fingerprint, read?.outDir, read?.result], [fp(1), path.join(cache.entryDir(fp(1)), 'out'), entry.result]);
  assert.is(await cache.has(fp(1)), true);
  assert.equal(await cache.list(), [{ fingerprint: fp(1), dir: cache.entryDir(fp(1)) }]);
  assert.ok((await cache.size(fp(1))) >= 'weights'.length);
});

test('a second publish of the same entry keeps the first and drops its own staging', async () => {
  const cache = newCache();
  const first = await cache.stage(fp(2), record(2));
  const second = await cache.stage(fp(2), record(2));
  writeFileSync(path.join(first.outDir, 'model.txt'), 'first');
  writeFileSync(path.join(second.outDir, 'model.txt'), 'second');
  await cache.publish(first, result(1));
  const entry = await cache.publish(second, result(2));
  assert.is(readFileSync(path.join(entry.outDir, 'model.txt'), 'utf8'), 'first');
  assert.is(entry.result.durationMs, 1);
  assert.equal(readdirSync(path.join(cache.root, 'tmp')), []);
});

test('a directory without its result is not an entry', async () => {
  const cache = newCache();
  mkdirSync(path.join(cache.entryDir(fp(3)), 'out'), { recursive: true });
  writeFileSync(path.join(cache.entryDir(fp(3)), 'record.json'), JSON.stringify(record(3)));
  assert.is(await cache.read(fp(3)), undefined);
  assert.is(await cache.has(fp(3)), false);
  assert.is(await cache.read(fp(99)), undefined);
});

test('metrics read back in order; the torn last line of a killed writer is ignored', async () => {
  const cache = newCache();
  const staging = await cache.stage(fp(4), record(4));
  const points = [{ key: 'loss', value: 0.5, step: 0, timestamp: 1 }, { key: 'loss', value: 0.25, step: 1, timestamp: 2 }];
  writeFileSync(path.join(staging.dir, 'metrics.jsonl'), `${points.map((p) => JSON.stringify(p)).join('\n')}\n{"key":"lo`);
  await cache.publish(staging, result(1));
  assert.equal(await cache.readMetrics(fp(4)), points);
  assert.equal(await cache.readMetrics(fp(5)), []);
});

test('discard drops a staging directory; nothing is published', async () => {
  const cache = newCache();
  const staging = await cache.stage(fp(6), record(6));
  writeFileSync(path.join(staging.outDir, 'half.txt'), 'half');
  await cache.discard(staging);
  assert.is(existsSync(staging.dir), false);
  assert.is(await cache.read(fp(6)), undefined);
  assert.equal(await cache.list(), []);
});

test('remove takes an entry away whole and leaves nothing behind; removing a missing one is no error', async () => {
  const cache = newCache();
  await publishOne(cache, 7, 'seven');
  await publishOne(cache, 8, 'eight');
  await cache.remove(fp(7));
  assert.is(await cache.read(fp(7)), undefined);
  assert.equal((await cache.list()).map((e) => e.fingerprint), [fp(8)]);
  assert.equal(readdirSync(path.join(cache.root, 'tmp')), []);
  await cache.remove(fp(7));
  assert.is(readFileSync(path.join(cache.entryDir(fp(8)), 'out', 'model.txt'), 'utf8'), 'eight');
});

test('the lock: a second taker waits, is told once who holds it, and gets it on release', async () => {
  const cache = newCache();
  const release = await cache.lock(fp(9));
  const lockFile = path.join(cache.root, 'locks', `${fp(9)}.lock`);
  const holder = JSON.parse(readFileSync(lockFile, 'utf8')) as LockInfo;
  assert.equal([holder.pid, holder.host], [process.pid, os.hostname()]);

  const told: LockInfo[] = [];
  const second = cache.lock(fp(9), (h) => told.push(h));
  assert.is(await settled(second), false, 'waits while the holder is alive');
  assert.equal(told.map((h) => h.pid), [process.pid]);
  await release();
  assert.is(await settled(second), true, 'taken once released');
  assert.is(told.length, 1);
  const releaseSecond = await second;
  await releaseSecond();
  assert.is(existsSync(lockFile), false);
  // Another entry's lock is independent.
  await (await cache.lock(fp(10)))();
});

test('a lock left by a dead process on this host, or torn, is taken over at once', async () => {
  const cache = newCache();
  const lockFile = (n: number) => path.join(cache.root, 'locks', `${fp(n)}.lock`);
  mkdirSync(path.join(cache.root, 'locks'), { recursive: true });
  writeFileSync(lockFile(11), JSON.stringify({ pid: deadPid(), host: os.hostname(), since: Date.now() }));
  writeFileSync(lockFile(12), '{"pid": 12');
  const told: LockInfo[] = [];
  for (const n of [11, 12]) {
    const release = await cache.lock(fp(n), (h) => told.push(h));
    assert.is((JSON.parse(readFileSync(lockFile(n), 'utf8')) as LockInfo).pid, process.pid);
    await release();
  }
  assert.equal(told, []);
  assert.equal(readdirSync(path.join(cache.root, 'locks')), [], 'no stale leftovers');
});

test("another host's lock is waited for while refreshed, and taken over once it is older than the lease", async () => {
  const cache = newCache();
  const lockFile = path.join(cache.root, 'locks', `${fp(13)}.lock`);
  mkdirSync(path.dirname(lockFile), { recursive: true });
  writeFileSync(lockFile, JSON.stringify({ pid: 1, host: 'another-host', since: Date.now() }));
  const told: LockInfo[] = [];
  const taking = cache.lock(fp(13), (h) => told.push(h));
  assert.is(await settled(taking), false, 'its holder cannot be checked: wait');
  assert.equal(told.map((h) => h.host), ['another-host']);
  const past = new Date(Date.now() - LOCK_LEASE_MS - 1000);
  utimesSync(lockFile, past, past);
  assert.is(await settled(taking), true, 'not refreshed for the lease: abandoned');
  await (await taking)();
});

test('cleanStale removes what dead local writers and long-silent remote ones left, nothing else', async () => {
  const cache = newCache();
  const tmp = path.join(cache.root, 'tmp');
  const live = await cache.stage(fp(14), record(14));
  const dead = deadPid();
  const dirs = {
    deadHere: `${fp(15)}.${dead}.0a0a0a0a.${hostTag}`,
    deadOldLayout: `${fp(16)}.${dead}.0b0b0b0b`,
    remoteFresh: `${fp(17)}.4242.0c0c0c0c.other-host`,
    remoteOld: `${fp(18)}.4242.0d0d0d0d.other-host`,
  };
  for (const dir of Object.values(dirs)) mkdirSync(path.join(tmp, dir, 'out'), { recursive: true });
  const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000);
  utimesSync(path.join(tmp, dirs.remoteOld), twoDaysAgo, twoDaysAgo);

  assert.is(await cache.cleanStale(), 3);
  assert.equal(readdirSync(tmp).sort(), [path.basename(live.dir), dirs.remoteFresh].sort());
  assert.is(await cache.cleanStale(), 0);
  await cache.publish(live, result(1));
  assert.ok(await cache.read(fp(14)), 'a live writer publishes as usual');
});

test('hold: entries a running stage reads are held until released; a dead holder holds nothing', async () => {
  const cache = newCache();
  await publishOne(cache, 1, 'one');
  await publishOne(cache, 2, 'two');
  assert.equal([...(await cache.held())], []);
  const release = await cache.hold([fp(1), fp(2), fp(1)]);
  assert.equal([...(await cache.held())].sort(), [fp(1), fp(2)]);
  assert.is(readdirSync(path.join(cache.root, 'locks')).length, 2);
  await release();
  assert.equal([...(await cache.held())], []);
  assert.equal(readdirSync(path.join(cache.root, 'locks')), []);
  // a use file whose process is gone: not held, and removed with the other stale locks
  const dead = deadPid();
  writeFileSync(path.join(cache.root, 'locks', `${fp(1)}.use.${dead}.00000000`), JSON.stringify({ pid: dead, host: os.hostname(), since: 0 }));
  assert.equal([...(await cache.held())], []);
  assert.is(await cache.cleanStale(), 1);
  // an entry being computed (its lock) is held as well
  const unlock = await cache.lock(fp(3));
  assert.equal([...(await cache.held())], [fp(3)]);
  await unlock();
});

test('usage counts a file two entries share (a hard link) once, and says which bytes are linked', async () => {
  const cache = newCache();
  await publishOne(cache, 1, 'x'.repeat(10_000));
  await publishOne(cache, 2, 'y'.repeat(100));
  const shared = path.join(cache.entryDir(fp(1)), 'out', 'model.txt');
  const { link } = await import('node:fs/promises');
  await link(shared, path.join(cache.entryDir(fp(2)), 'out', 'linked.txt'));
  const usage = await cache.usage([fp(1), fp(2), fp(9)]);
  const one = usage.entries.get(fp(1))!;
  const two = usage.entries.get(fp(2))!;
  assert.is(usage.entries.has(fp(9)), false);
  assert.is(one.linkedBytes, 10_000);
  assert.is(two.linkedBytes, 10_000);
  assert.ok(two.bytes > 10_100);
  assert.is(usage.uniqueBytes, one.bytes + two.bytes - 10_000);
});

test.run();
