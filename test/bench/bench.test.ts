// The pure logic of `npm run bench` (bench/lib.ts, bench/report.ts); the benchmark itself is not run.
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { countMacs, evaluateTargets, formatDuration, layerShapes, markdownTable, parseBenchOptions, type LayerShape } from '../../bench/lib.ts';
import { spliceReadme, spliceSummary } from '../../bench/render.ts';
import { fromRepo, repoRoot } from '../../bench/shared.ts';
import { kerasWork, pipeWork, renderMarkdown, renderSummary, withTargets, type BenchResult } from '../../bench/report.ts';
import { buildMobileNetV2, describeMobileNetV2, type MobileNetV2Options } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';

const tf = loadTf();

test('countMacs: conv, depthwise and dense by hand; elementwise layers are free', () => {
  const layers: LayerShape[] = [
    { name: 'conv', className: 'Conv2D', kernelShape: [3, 3, 3, 8], outputShape: [null, 4, 4, 8] },
    { name: 'bn', className: 'BatchNormalization', outputShape: [null, 4, 4, 8] },
    { name: 'relu', className: 'ReLU', outputShape: [null, 4, 4, 8] },
    { name: 'dw', className: 'DepthwiseConv2D', kernelShape: [3, 3, 8, 1], outputShape: [null, 4, 4, 8] },
    { name: 'dense', className: 'Dense', kernelShape: [8, 2], outputShape: [null, 2] },
  ];
  const { macs, byClass } = countMacs(layers);
  assert.equal(byClass, { Conv2D: 16 * 3 * 3 * 3 * 8, DepthwiseConv2D: 16 * 3 * 3 * 8, Dense: 16 });
  assert.is(macs, 3456 + 1152 + 16);
  assert.throws(() => countMacs([{ name: 'c', className: 'Conv2D', outputShape: [null, 1, 1, 1] }]), /c \(Conv2D\) has no kernel shape/);
});

/** An independent count from pipe's description of the architecture (not the built model). */
function describedMacs(options: MobileNetV2Options): number {
  const specs = describeMobileNetV2(options);
  const byName = new Map(specs.map((s) => [s.name, s]));
  let macs = 0;
  for (const s of specs) {
    const [h, w, c] = s.outputShape;
    const cin = byName.get(s.inputs[0]!)?.outputShape[2] ?? 0;
    if (s.kind === 'conv') macs += h * w * s.kernelSize * s.kernelSize * cin * c;
    if (s.kind === 'depthwise') macs += h * w * s.kernelSize * s.kernelSize * cin;
  }
  return macs;
}

test('the built MobileNetV2 (alpha 0.35, 96 px, no weights) counts as its description', () => {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 0 });
  try {
    const { macs, byClass } = countMacs(layerShapes(model));
    assert.is(macs, describedMacs({ alpha: 0.35, inputSize: 96 }));
    assert.ok(byClass['Conv2D']! > byClass['DepthwiseConv2D']!);
    assert.not.ok('Dense' in byClass);
  } finally {
    model.dispose();
  }
});

test('MobileNetV2 1.0: about 300 M MACs at 224 px (published, with its 1.28 M-MAC top), 0.31 GFLOP at 160', () => {
  const at224 = describedMacs({ alpha: 1.0, inputSize: 224 });
  assert.ok(Math.abs(at224 + 1.28e6 - 300e6) < 0.02 * 300e6, `${at224}`);
  const flops160 = 2 * describedMacs({ alpha: 1.0, inputSize: 160 });
  assert.ok(flops160 > 0.3e9 && flops160 < 0.32e9, `${flops160}`);
});

test('evaluateTargets: the issue’s four targets and the accuracy condition', () => {
  const targets = evaluateTargets({
    kerasWallS: 1600,
    kerasTestAccuracy: 0.975,
    pipeWallS: 400,
    pipeTestAccuracy: 0.985,
    refitWallS: 160,
    warmWallS: 2,
    sweepWallS: 900,
  });
  const byId = Object.fromEntries(targets.map((t) => [t.id, t]));
  assert.equal(Object.keys(byId).sort(), ['accuracy', 'recipe', 'refit', 'sweep', 'warm']);
  assert.is(byId['recipe']!.pass, true); // exactly a quarter
  assert.is(byId['accuracy']!.pass, true); // exactly one point
  assert.is(byId['refit']!.pass, false); // a tenth is not under a tenth
  assert.is(byId['warm']!.pass, true);
  assert.is(byId['sweep']!.pass, false);
  assert.is(byId['sweep']!.text, '15m00s / 6m40s = 2.25 (limit 2, i.e. 13m20s)');
  assert.equal(evaluateTargets({ warmWallS: 7 }).map((t) => [t.id, t.pass]), [['warm', false]]);
});

test('parseBenchOptions: defaults, and every problem at once', () => {
  const ok = parseBenchOptions({ skip: 'sweep,throughput', limit: '20', epochs: '1,2' });
  assert.ok('options' in ok);
  if ('options' in ok) {
    assert.equal([...ok.options.only], ['keras', 'pipe', 'refit', 'warm']);
    assert.is(ok.options.limit, 20);
    assert.equal(ok.options.epochs, { initial: 1, fineTune: 2 });
    assert.is(ok.options.kerasSweep, 'extrapolate');
    // ../shared beside the repository, wherever it is cloned
    assert.is(ok.options.data, path.resolve(repoRoot, '..', 'shared', 'data', 'cats_and_dogs', 'train'));
    assert.is(fromRepo(ok.options.weights), path.join('..', 'shared', 'weights', 'mobilenet_v2_1.0_no_top_imagenet_coral.h5'));
  }
  const bad = parseBenchOptions({ only: 'keras,warm,gpu', limit: '0', epochs: '3', 'keras-sweep': 'guess' });
  assert.ok('problems' in bad);
  if ('problems' in bad) {
    assert.equal(bad.problems, [
      '--only: unknown measurement(s) gpu (known: keras, pipe, refit, warm, sweep, throughput)',
      "warm runs in the cache of the cold pipe run: it needs 'pipe' too",
      "--limit: expected a positive integer, got '0'",
      "--epochs: expected INITIAL,FINE_TUNE (e.g. 10,10), got '3'",
      "--keras-sweep: expected measure or extrapolate, got 'guess'",
    ]);
  }
});

test('formatDuration and markdownTable', () => {
  assert.is(formatDuration(2.04), '2.0 s');
  assert.is(formatDuration(894.4), '14m54s');
  assert.is(formatDuration(3725), '1h02m05s');
  assert.is(markdownTable(['a', 'b'], [['x|y', '1']]), '| a | b |\n| --- | --- |\n| x\\|y | 1 |');
});

test('renderMarkdown: a partial result renders with what it has and the targets it can judge', () => {
  const memory = { treeMb: 2048, processMb: 1500, processCommand: 'node', mlflowMb: 300, samples: 10 };
  const proc = { command: 'x', exitCode: 0, startedAt: '', loadAverage: { start: [1, 1, 1], end: [2, 2, 2] }, memory, log: 'l' };
  const result = withTargets({
    format: 'pipe-bench/1',
    date: '2026-11-28T06:00:00Z',
    partial: true,
    notes: [],
    machine: { cores: 2, cpuModel: 'AMD EPYC', ramGiB: 24, os: 'Linux', node: '20', loadAverage: { start: [1, 1, 1] } },
    inputs: { data: 'd', weights: 'w', epochs: { initial: 10, fineTune: 10 } },
    options: { only: ['keras', 'pipe'], kerasSweep: 'extrapolate', refitAt: 120 },
    pipeSource: { commit: 'ee280c6b31dc6bac', from: 'HEAD', dirty: false, dir: 'x' },
    keras: { ...proc, wallS: 1600, fineTuneAt: 100, fineTuneLr: 1e-5, timesS: { total: 1590, recipe: 1500 }, testAccuracy: 0.975, valAccuracy: 0.97 },
    pipe: {
      ...proc,
      wallS: 800,
      runDir: 'r',
      status: 'succeeded',
      testAccuracy: 0.98,
      valAccuracy: 0.9875,
      stages: [{ name: 'features', kind: 'extract-features', status: 'ran', durationS: 300, summary: { images: 14600, images_per_second: 55.2 } }],
    },
    targets: [],
  } satisfies BenchResult);
  const md = renderMarkdown(result);
  assert.match(md, '(partial: the benchmark did not finish)');
  assert.match(md, '| 1. whole recipe (10 + 11 epochs, evaluation), cold cache | 13m20s | 26m40s | pipe / Keras = 0.500 |');
  assert.match(md, '| whole recipe with pipe ≤ ¼ of the Keras wall time | 13m20s / 26m40s = 0.500 (limit 0.25, i.e. 6m40s) | **miss** |');
  assert.match(md, '| features | ran | 5m00s | 37.5 % | 14,600 images; 48.7 images/s over the stage; 55.2 images/s in the base (compute only) |');
  assert.not.match(md, 'warm re-run, nothing changed');
});

test('kerasWork and pipeWork: the recipe’s passes counted with per-layer FLOPs', () => {
  // a toy network of 4 layers: 1, 2, 3, 4 MACs, i.e. a 20-FLOP forward
  const cumulativeMacs = { a: 1, b: 3, c: 6, d: 10 };
  const flops = { model: 'toy', alpha: 1, size: 1, layers: 4, macs: 10, forwardFlops: 20, macsByClass: {}, cumulativeMacs };
  const memory = { treeMb: 0, processMb: 0, processCommand: '', mlflowMb: 0, samples: 0 };
  const proc = { command: 'x', exitCode: 0, startedAt: '', loadAverage: { start: [0], end: [0] }, memory, log: 'l' };
  const stages = [
    { name: 'split', kind: 'split', status: 'ran', durationS: 1, summary: { train_images: 10, validation_images: 4, test_images: 2 } },
    { name: 'features', kind: 'extract-features', status: 'ran', durationS: 1, summary: { images: 26 } },
    { name: 'activations', kind: 'extract-features', status: 'ran', durationS: 1, summary: { images: 26, boundary: 'b' } },
    { name: 'fine-tune', kind: 'fine-tune', status: 'ran', durationS: 1, summary: { epochs_run: 3 } },
    { name: 'evaluate', kind: 'evaluate', status: 'ran', durationS: 1, summary: {} },
  ];
  const result = {
    probe: { runtime: { backend: 't', tfjs: '', libtensorflow: '' }, matmul: { n: 1, reps: 1, bestGflops: 1, medianGflops: 1 }, flops, wallS: 1, memory },
    pipe: { ...proc, wallS: 5, runDir: '', status: 'succeeded', stages },
  } as unknown as BenchResult;
  const pipe = pipeWork(result, result.pipe!)!;
  // features 26 × 20; activations 26 × 6 (up to b); fine-tune 3 × (10 × 3 + 4) × 14 (top = 20 − 6); evaluate 2 × 14
  assert.equal(pipe.parts.map(([, x]) => x), [520, 156, 1428, 28]);
  const keras = kerasWork(result, {
    ...proc,
    wallS: 1,
    fineTuneAt: 2,
    fineTuneLr: 1e-5,
    timesS: {},
    phase1Epochs: 2,
    phase2Epochs: 3,
    counts: { train: { a: 5, b: 5 }, validation: { a: 2, b: 2 }, test: { a: 1, b: 1 } },
  })!;
  // layers from index 2 train: frozen part = 3 MACs = 6 FLOPs, top = 14
  assert.equal(keras.parts.map(([, x]) => x), [2 * 14 * 20, 3 * (14 * 20 + 2 * 10 * 14), 2 * 20]);
  assert.is(keras.flops, 560 + 1680 + 40);
});

test('spliceReadme: adds a Benchmarks section before Tests once, then replaces only between the markers', () => {
  const readme = '# pipe\n\n## The main job\n\ntext\n\n## Tests\n\nnpm test\n';
  const first = spliceReadme(readme, 'table 1');
  assert.match(first, /## The main job\n\ntext\n\n## Benchmarks\n\n.*\n\n<!-- bench:start -->\ntable 1\n<!-- bench:end -->\n\n## Tests\n/);
  const second = spliceReadme(first.replace('npm test', 'npm test (edited)'), 'table 2');
  assert.is(second, first.replace('table 1', 'table 2').replace('npm test', 'npm test (edited)'));
});

test('renderSummary and spliceSummary: the short table of README.md, replaced only between its markers', () => {
  const memory = { treeMb: 2048, processMb: 1500, processCommand: 'node', mlflowMb: 300, samples: 10 };
  const proc = { command: 'x', exitCode: 0, startedAt: '', loadAverage: { start: [1, 1, 1], end: [2, 2, 2] }, memory, log: 'l' };
  const result = withTargets({
    format: 'pipe-bench/1',
    date: '2026-11-28T06:00:00Z',
    partial: false,
    notes: [],
    machine: { cores: 2, cpuModel: 'AMD EPYC', ramGiB: 24, os: 'Linux', node: '20', tfjs: '4.22.0', libtensorflow: '2.21.0', loadAverage: { start: [5.17, 3.85, 2.57], end: [2.23, 2.44, 2.6] } },
    inputs: { data: 'd', weights: 'w', epochs: { initial: 10, fineTune: 10 } },
    options: { only: ['keras', 'pipe', 'refit'], kerasSweep: 'extrapolate', refitAt: 120 },
    pipeSource: { commit: 'ee280c6b31dc6bac', from: 'HEAD', dirty: false, dir: 'x' },
    keras: { ...proc, wallS: 1600, fineTuneAt: 100, fineTuneLr: 1e-5, timesS: { total: 1590, recipe: 1500 }, testAccuracy: 0.975, versions: { tensorflow: '2.21.0', keras: '3.15.1', numpy: '2.4.6' } },
    pipe: { ...proc, wallS: 800, runDir: 'r', status: 'succeeded', testAccuracy: 0.98, stages: [] },
    refit: { ...proc, wallS: 400, runDir: 'r2', status: 'succeeded', testAccuracy: 0.985, stages: [] },
    targets: [],
  } satisfies BenchResult);
  const summary = renderSummary(result, 'bench/README.md');
  assert.match(summary, 'The latest `npm run bench` (2026-11-28T06:00:00Z, pipe at commit `ee280c6b31dc`)');
  assert.match(summary, "Keras code (tensorflow 2.21.0, keras 3.15.1) run one after the other");
  assert.match(summary, 'Load average (1 min): 5.2 at the start, 2.2 at the end');
  assert.match(summary, '| whole recipe (10 + 11 epochs, evaluation), cold cache | 13m20s | 26m40s |');
  assert.match(summary, '| test accuracy | 0.980 | 0.975 |');
  assert.match(summary, '| again with only `fine_tune_at` = 120 | 6m40s | 26m40s (a whole new run) |');
  assert.match(summary, '| peak memory (RSS of the process tree) | 2.00 GiB | 2.00 GiB |');
  assert.not.match(summary, 'warm re-run');
  assert.match(summary, '[bench/README.md](bench/README.md)');

  const readme = '# pipe\n\n### Current figures\n\n<!-- bench-summary:start -->\nold\n<!-- bench-summary:end -->\n\n## Pipeline files\n';
  assert.is(spliceSummary(readme, 'new\n'), readme.replace('old', 'new'));
  assert.is(spliceSummary('# pipe\n\nno markers\n', 'new'), undefined);
});

test.run();
