// The cache's own checks: entries are checksummed when published and checked before use.
import { mkdtempSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cache } from '../../src/cache/cache.ts';
import type { FingerprintRecord } from '../../src/cache/fingerprint.ts';

const record = { schema: 1, kind: 'command', version: 0, params: {}, inputs: {} } as unknown as FingerprintRecord;
const result = { durationMs: 1, finishedAt: 1, summary: {}, artifacts: [] };

async function published(files: Record<string, string>): Promise<{ cache: Cache; fingerprint: string; dir: string }> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pipe-cache-'));
  const fingerprint = 'f'.repeat(64);
  const cache = new Cache(root);
  const staging = await cache.stage(fingerprint, record);
  for (const [name, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(staging.dir, name)), { recursive: true });
    await fs.writeFile(path.join(staging.dir, name), text);
  }
  await cache.publish(staging, result);
  return { cache, fingerprint, dir: cache.entryDir(fingerprint) };
}

const noDamage = (problem: string) => assert.unreachable(problem);

test('publishing records the size and sha256 of every output file and the metrics', async () => {
  const { cache, fingerprint } = await published({ 'out/model/weights.bin': 'abc', 'out/report.txt': 'hi', 'metrics.jsonl': '{}\n' });
  const entry = await cache.read(fingerprint);
  assert.equal(Object.keys(entry!.result.checksums ?? {}).sort(), ['metrics.jsonl', 'out/model/weights.bin', 'out/report.txt']);
  assert.equal(entry!.result.checksums!['out/report.txt'], { size: 2, sha256: '8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4' });
});

test('a changed, truncated or missing file: the entry is removed and named with the file', async () => {
  for (const [damage, expected] of [
    [(dir: string) => fs.writeFile(path.join(dir, 'out', 'a.txt'), 'xyz'), /out\/a\.txt has changed since it was published/],
    [(dir: string) => fs.writeFile(path.join(dir, 'out', 'a.txt'), 'a'), /out\/a\.txt has 1 bytes, 3 when published/],
    [(dir: string) => fs.rm(path.join(dir, 'metrics.jsonl')), /metrics\.jsonl is missing/],
    [(dir: string) => fs.writeFile(path.join(dir, 'result.json'), '{"durationMs": 1, "fini'), /result\.json cannot be read/],
  ] as const) {
    const { dir, fingerprint } = await published({ 'out/a.txt': 'abc', 'metrics.jsonl': '{}\n' });
    await damage(dir);
    const fresh = new Cache(path.dirname(path.dirname(dir))); // another run: nothing checked yet
    const problems: string[] = [];
    assert.is(await fresh.readIntact(fingerprint, (p) => problems.push(p)), undefined);
    assert.is(problems.length, 1);
    assert.match(problems[0]!, expected);
    assert.match(problems[0]!, /^cache entry ffffffffff is damaged: .*; removed it$/);
    assert.is(await fresh.has(fingerprint), false, 'the damaged entry is gone');
  }
});

test('an intact entry is used; one published before checksums were recorded is used unchecked', async () => {
  const { dir, fingerprint } = await published({ 'out/a.txt': 'abc' });
  const fresh = new Cache(path.dirname(path.dirname(dir)));
  assert.ok(await fresh.readIntact(fingerprint, noDamage));
  const old = JSON.parse(await fs.readFile(path.join(dir, 'result.json'), 'utf8')) as Record<string, unknown>;
  delete old['checksums'];
  await fs.writeFile(path.join(dir, 'result.json'), JSON.stringify(old));
  await fs.writeFile(path.join(dir, 'out', 'a.txt'), 'anything');
  assert.ok(await new Cache(fresh.root).readIntact(fingerprint, noDamage));
});

test('waiting for a lock ends when the run is stopped', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pipe-cache-'));
  const release = await new Cache(root).lock('c'.repeat(64));
  let reason: string | undefined;
  setTimeout(() => (reason = 'interrupted by SIGTERM'), 300);
  let waited = false;
  const error = await new Cache(root).lock('c'.repeat(64), () => (waited = true), () => reason).then(() => undefined, (e: Error) => e);
  assert.ok(waited);
  assert.match(error?.message ?? '', new RegExp(`^stopped while waiting for process ${process.pid} on .*: interrupted by SIGTERM$`));
  await release();
});

/** Makes the entry's stamp older than its files' last change by more than the racy window. */
async function ageStamp(dir: string): Promise<void> {
  const file = path.join(dir, 'verified.json');
  const stamp = JSON.parse(await fs.readFile(file, 'utf8')) as { checkedAt: number };
  stamp.checkedAt += 60_000;
  await fs.writeFile(file, JSON.stringify(stamp));
}

test('a checked entry is stamped; while its files are unchanged the next runs do not hash them again', async () => {
  const { dir, fingerprint } = await published({ 'out/a.txt': 'abc', 'metrics.jsonl': '{}\n' });
  const root = path.dirname(path.dirname(dir));
  assert.ok(await new Cache(root).readIntact(fingerprint, noDamage));
  await ageStamp(dir); // as if the check had been made a minute after publishing
  // A wrong recorded hash goes unnoticed only if the files are not hashed: the stamp is trusted.
  const result = JSON.parse(await fs.readFile(path.join(dir, 'result.json'), 'utf8')) as { checksums: Record<string, { sha256: string }> };
  result.checksums['out/a.txt']!.sha256 = '0'.repeat(64);
  await fs.writeFile(path.join(dir, 'result.json'), JSON.stringify(result));
  assert.ok(await new Cache(root).readIntact(fingerprint, noDamage), 'stamp trusted, files not hashed');
});

test('a file written after the stamp (same size) is hashed and found changed', async () => {
  const { dir, fingerprint } = await published({ 'out/a.txt': 'abc' });
  const root = path.dirname(path.dirname(dir));
  assert.ok(await new Cache(root).readIntact(fingerprint, noDamage));
  await ageStamp(dir);
  await fs.writeFile(path.join(dir, 'out', 'a.txt'), 'abd');
  const problems: string[] = [];
  assert.is(await new Cache(root).readIntact(fingerprint, (p) => problems.push(p)), undefined);
  assert.match(problems[0] ?? '', /out\/a\.txt has changed since it was published/);
});

test('the stamp written at publishing is trusted at once', async () => {
  const { dir, fingerprint } = await published({ 'out/a.txt': 'abc' });
  const result = JSON.parse(await fs.readFile(path.join(dir, 'result.json'), 'utf8')) as { checksums: Record<string, { sha256: string }> };
  result.checksums['out/a.txt']!.sha256 = '0'.repeat(64);
  await fs.writeFile(path.join(dir, 'result.json'), JSON.stringify(result));
  assert.ok(await new Cache(path.dirname(path.dirname(dir))).readIntact(fingerprint, noDamage), 'not hashed');
  // A write after publishing: hashed, found changed.
  await fs.writeFile(path.join(dir, 'out', 'a.txt'), 'abd');
  assert.is(await new Cache(path.dirname(path.dirname(dir))).readIntact(fingerprint, () => undefined), undefined);
});

test('a stamp written right after its files changed (racy) is not trusted', async () => {
  const { dir, fingerprint } = await published({ 'out/a.txt': 'abc' });
  const root = path.dirname(path.dirname(dir));
  await fs.rm(path.join(dir, 'verified.json')); // as an entry published before stamps
  assert.ok(await new Cache(root).readIntact(fingerprint, noDamage));
  const result = JSON.parse(await fs.readFile(path.join(dir, 'result.json'), 'utf8')) as { checksums: Record<string, { sha256: string }> };
  result.checksums['out/a.txt']!.sha256 = '0'.repeat(64);
  await fs.writeFile(path.join(dir, 'result.json'), JSON.stringify(result));
  const problems: string[] = [];
  assert.is(await new Cache(root).readIntact(fingerprint, (p) => problems.push(p)), undefined, 'hashed again');
  assert.is(problems.length, 1);
});

test.run();
