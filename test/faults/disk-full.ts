// A disk that fills: the cache on a 2 MiB tmpfs, partly taken by a filler file of random size, so
// that a run runs out of space at a random point (writing a lock, a record, an output copy, a log).
// The run must fail cleanly: no half entry, nothing left in tmp/, no process left, a terminal
// MLflow record. With the filler gone, the resumed run must give the undisturbed run's results.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { project } from '../helpers/cli.ts';
import { log, parseSummary, type SharedMlflow } from './command-chain.ts';
import type { ProcessWatch } from './processes.ts';
import type { Random } from './random.ts';
import { checkCacheAfter, readdirSafe, recordLeaks, resultMetrics, settle, startPipeRun, syncAndCheckRecords } from './runs.ts';
import type { Tally } from './tally.ts';

export const DISK_FULL = 'disk full (cache on a 2 MiB tmpfs)';
const SIZE = 2 * 1024 * 1024;
const OUTPUT_BYTES = 600_000;

function diskPipeline(): string {
  const big = (i: number) => `  big${i}:
    run: "sleep 0.2; head -c ${OUTPUT_BYTES} /dev/zero | tr '\\\\0' '${i}' > big${i}.bin"
    outs: [big${i}.bin]
`;
  return `name: disk
experiment: faults-disk
stages:
${big(1)}${big(2)}  sizes:
    run: "printf '{\\"bytes\\": %d}' $(cat big1.bin big2.bin | wc -c) > sizes.json"
    deps: [big1.bin, big2.bin]
    metrics: [sizes.json]
`;
}

const mounted = new Set<string>();

/** Mounts a tmpfs of SIZE bytes, or says why it cannot (not root, no CAP_SYS_ADMIN, no mount). */
function mountTmpfs(dir: string): string | undefined {
  const result = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${SIZE}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (result.error) return result.error.message;
  if (result.status !== 0) return (result.stderr || `mount exited ${result.status}`).trim();
  mounted.add(dir);
  return undefined;
}

function unmount(dir: string): void {
  spawnSync('umount', [dir]);
  mounted.delete(dir);
  rmSync(dir, { recursive: true, force: true });
}

/** For a suite that is stopped half-way: no tmpfs stays mounted. */
export function unmountAll(): void {
  for (const dir of mounted) unmount(dir);
}

export interface DiskContext {
  watch: ProcessWatch;
  tally: Tally;
  mlflow: SharedMlflow;
}

/** Returns a message when the scenario had to be skipped. */
export async function diskFullScenario(ctx: DiskContext, random: Random, rounds: number): Promise<string | undefined> {
  const mountPoint = mkdtempSync(path.join(os.tmpdir(), 'pipe-faults-tmpfs-'));
  const refused = mountTmpfs(mountPoint);
  if (refused !== undefined) {
    rmSync(mountPoint, { recursive: true, force: true });
    return `disk-full faults skipped: cannot mount a tmpfs here (${refused}); they need root (CI runs as root)`;
  }
  try {
    await runRounds(ctx, random, rounds, mountPoint);
  } finally {
    unmount(mountPoint);
  }
  return undefined;
}

async function runRounds(ctx: DiskContext, random: Random, rounds: number, mountPoint: string): Promise<void> {
  const { watch, tally, mlflow } = ctx;
  const env = { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: mlflow.uri };
  const referenceDir = project({ 'p.yaml': diskPipeline() });
  const reference = await settle(startPipeRun(referenceDir, ['run', 'p.yaml', '--json'], env, watch, 'disk-ref'), watch);
  if (reference.ended.exitCode !== 0) throw new Error(`the undisturbed disk run failed: ${reference.ended.stderr}`);
  const expected = resultMetrics(parseSummary(reference.ended.stdout)!.metrics);

  const dir = project({ 'p.yaml': diskPipeline() });
  const cache = path.join(mountPoint, 'cache');
  const args = ['run', 'p.yaml', '--json', '--cache', cache];
  for (let round = 1; round <= rounds; round++) {
    const where = `disk round ${round}`;
    for (const name of readdirSafe(mountPoint)) rmSync(path.join(mountPoint, name), { recursive: true, force: true });
    const filler = path.join(mountPoint, 'filler');
    // Sized so that the two outputs cannot both fit: the space runs out somewhere in the run.
    writeFileSync(filler, Buffer.alloc(random.int(SIZE - 2 * OUTPUT_BYTES, SIZE - 20_000)));
    const full = await settle(startPipeRun(dir, args, env, watch, 'disk'), watch);
    const summary = parseSummary(full.ended.stdout);
    const noSpace = /ENOSPC|no space/i.test(`${full.ended.stdout}\n${full.ended.stderr}`);
    const label = noSpace ? DISK_FULL : 'no fault (the disk did not fill)';
    if (noSpace) tally.fault(DISK_FULL);
    log(`${where}: ${label} → exit ${full.ended.exitCode ?? full.ended.signal}`);
    recordLeaks(tally, label, where, full.leaks);
    if (noSpace && full.ended.exitCode !== 1) {
      tally.problem('broken promise', label, `${where}: a full disk should fail the run (exit 1) with a message, got exit ${full.ended.exitCode ?? full.ended.signal}: ${full.ended.stderr.slice(-300)}`);
    }
    if (noSpace && /\n\s+at .+:\d+:\d+\)?\n/.test(full.ended.stderr)) {
      tally.problem('broken promise', label, `${where}: a full disk printed a stack trace: ${full.ended.stderr.slice(-400)}`);
    }
    await checkCacheAfter(tally, label, where, cache, full.ended);
    if (summary?.status === 'succeeded') continue;

    rmSync(filler);
    const resumed = await settle(startPipeRun(dir, args, env, watch, 'disk'), watch);
    recordLeaks(tally, label, `${where} (resumed)`, resumed.leaks);
    await checkCacheAfter(tally, label, `${where} (resumed)`, cache, resumed.ended);
    if (resumed.ended.exitCode !== 0) {
      tally.problem('broken promise', label, `${where}: the resumed run exited ${resumed.ended.exitCode}: ${resumed.ended.stderr.slice(-300)}`);
      continue;
    }
    if (noSpace) tally.resumed++;
    const metrics = resultMetrics(parseSummary(resumed.ended.stdout)?.metrics ?? {});
    if (JSON.stringify(metrics) !== JSON.stringify(expected)) {
      tally.problem('broken promise', label, `${where}: resumed metrics ${JSON.stringify(metrics)}, undisturbed ${JSON.stringify(expected)}`);
    }
    for (const i of [1, 2]) {
      const text = readFileSync(path.join(dir, `big${i}.bin`));
      if (text.length !== OUTPUT_BYTES || text.some((b) => b !== 48 + i)) tally.problem('entries corrupted (used)', label, `${where}: big${i}.bin is not the undisturbed output`);
    }
  }
  await mlflow.ready();
  await syncAndCheckRecords(tally, mlflow.client, mlflow.uri, [referenceDir, dir], 'disk', 'faults-disk');
}
