// Peak memory of the data stages against the number of images (issue 16): a measurement, not a
// test. For each count it generates that many synthetic JPEGs (two classes, 200×200), then runs
// fetch → split → augment at 160×160 with the real `pipe` CLI, one stage per invocation (the
// earlier ones come from the cache), and samples the peak RSS (VmHWM) of the stage process from
// /proc while it runs. Memory that does not grow with the count is what the streaming image sets
// promise; the cache bytes per stage come from the run summaries.
//
//   npx tsx scripts/measure-memory.ts [--counts 3000,12000] [--views 2] [--keep]
//
// Disk: about 77 KB per image for fetch and views × 77 KB per training image for augment (12,000
// images with 2 views: about 2.2 GB), in a temporary directory removed at the end (unless --keep).

import { execa } from 'execa';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { loadTf } from '../src/ml/tf.ts';
import type { RunSummary } from '../src/core/events.ts';
import { formatBytes } from '../src/util/format.ts';

const pipeBin = fileURLToPath(new URL('../bin/pipe.js', import.meta.url));
const { values } = parseArgs({
  options: { counts: { type: 'string', default: '3000,12000' }, views: { type: 'string', default: '2' }, keep: { type: 'boolean' } },
});
const counts = values.counts.split(',').map(Number);
const views = Number(values.views);
const tf = loadTf();

/** A 200×200 RGB image of class 0 (horizontal stripes) or 1 (vertical), varied by `i`. */
function syntheticImage(label: number, i: number): Uint8Array {
  const size = 200;
  const pixels = new Uint8Array(size * size * 3);
  const period = 6 + (i % 17);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const t = label === 0 ? y : x;
      const on = Math.floor((t + i) / period) % 2 === 0;
      const k = (y * size + x) * 3;
      pixels[k] = on ? 200 : (i * 37) % 120;
      pixels[k + 1] = on ? (i * 13) % 256 : 40;
      pixels[k + 2] = (x + y + i) % 256;
    }
  }
  return pixels;
}

async function writeImages(root: string, count: number): Promise<void> {
  for (const name of ['horizontal', 'vertical']) mkdirSync(path.join(root, name), { recursive: true });
  for (let i = 0; i < count; i++) {
    const label = i % 2;
    const jpeg = await tf.node.encodeJpeg(tf.tensor3d(syntheticImage(label, i), [200, 200, 3], 'int32') as never, 'rgb', 90);
    writeFileSync(path.join(root, label ? 'vertical' : 'horizontal', `${i}.jpg`), jpeg);
  }
}

/** Peak RSS (VmHWM, bytes) of each stage process the pipe process `pid` starts, sampled until it exits. */
function sampleStages(pid: number): { stop: () => number[] } {
  const peaks = new Map<number, number>();
  const timer = setInterval(() => {
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (ppid !== pid) continue;
        if (!readFileSync(`/proc/${name}/cmdline`, 'utf8').includes('stage-process.ts')) continue;
        const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${name}/status`, 'utf8'));
        if (hwm) peaks.set(Number(name), Math.max(peaks.get(Number(name)) ?? 0, Number(hwm[1]) * 1024));
      } catch {
        // gone meanwhile
      }
    }
  }, 50);
  return {
    stop: () => {
      clearInterval(timer);
      return [...peaks.values()];
    },
  };
}

const stages = {
  fetch: '  fetch: {kind: fetch, with: {source: ./images, image_size: [160, 160]}}\n',
  split: '  split: {kind: split, needs: [fetch]}\n',
  augment: `  augment: {kind: augment, needs: [split], with: {views: ${views}}}\n`,
};

interface Row {
  images: number;
  stage: string;
  seconds: number;
  peakRss: number;
  cacheBytes: number;
  linkedBytes: number;
}

const rows: Row[] = [];
const work = mkdtempSync(path.join(os.tmpdir(), 'pipe-measure-memory-'));
try {
  for (const count of counts) {
    const dir = path.join(work, String(count));
    const started = Date.now();
    await writeImages(path.join(dir, 'images'), count);
    console.error(`${count} images generated in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    const names = Object.keys(stages) as Array<keyof typeof stages>;
    for (let n = 1; n <= names.length; n++) {
      const stage = names[n - 1]!;
      writeFileSync(path.join(dir, 'p.yaml'), `name: measure\nstages:\n${names.slice(0, n).map((s) => stages[s]).join('')}`);
      const t0 = Date.now();
      const child = execa(process.execPath, [pipeBin, 'run', 'p.yaml', '--json', '--no-track', '--jobs', '1'], { cwd: dir, reject: false, env: { CI: '1' } });
      const sampler = sampleStages(child.pid!);
      const result = await child;
      const peaks = sampler.stop();
      if (result.exitCode !== 0) throw new Error(`pipe run failed (${stage}, ${count} images):\n${result.stderr}`);
      const summary = JSON.parse(result.stdout) as RunSummary;
      const own = summary.stages.find((s) => s.name === stage)!;
      if (own.status !== 'ran' || peaks.length !== 1) throw new Error(`${stage}: expected one stage process, status ${own.status}, ${peaks.length} sampled`);
      rows.push({ images: count, stage, seconds: (Date.now() - t0) / 1000, peakRss: peaks[0]!, cacheBytes: own.cacheBytes ?? 0, linkedBytes: own.cacheLinkedBytes ?? 0 });
      console.error(`${count} images, ${stage}: peak RSS ${formatBytes(peaks[0]!)}, ${formatBytes(own.cacheBytes ?? 0)} in the cache`);
    }
  }
} finally {
  if (!values.keep) rmSync(work, { recursive: true, force: true });
  else console.error(`kept ${work}`);
}

console.log(`| images | stage | wall time | peak RSS of the stage process | cache bytes of the entry (of which hard-linked) |`);
console.log(`| ---: | --- | ---: | ---: | ---: |`);
for (const r of rows) {
  console.log(`| ${r.images} | ${r.stage} | ${r.seconds.toFixed(1)} s | ${formatBytes(r.peakRss)} | ${formatBytes(r.cacheBytes)}${r.linkedBytes ? ` (${formatBytes(r.linkedBytes)})` : ''} |`);
}
