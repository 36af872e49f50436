import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  countGpus,
  FlavourError,
  gpuIds,
  flavourInfo,
  parseNvidiaSmiList,
  resolveFlavour,
  runtimeFingerprint,
  visibleGpus,
} from '../../src/exec/runtime.ts';

const temps: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-runtime-'));
  temps.push(dir);
  return dir;
}
test.after(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

const napi = Number(process.versions.napi);

/** A fake tfjs package in root/node_modules, built as far as `stage` says. */
function fakePackage(
  root: string,
  name: string,
  stage: 'installed' | 'lib' | 'ready' | 'ready-with-stamp',
): string {
  const dir = path.join(root, 'node_modules', name);
  mkdirSync(dir, { recursive: true });
  const binary = { module_name: 'tfjs_binding', module_path: './lib/napi-v{napi_build_version}', napi_versions: [3, 8, 999] };
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, version: '4.22.0', binary }));
  if (stage === 'installed') return dir;
  mkdirSync(path.join(dir, 'deps', 'lib'), { recursive: true });
  writeFileSync(path.join(dir, 'deps', 'lib', 'libtensorflow_cc.so.2'), '');
  if (stage === 'lib') return dir;
  const bindingDir = path.join(dir, 'lib', `napi-v${Math.min(8, napi)}`);
  mkdirSync(bindingDir, { recursive: true });
  writeFileSync(path.join(bindingDir, 'tfjs_binding.node'), '');
  if (stage === 'ready-with-stamp') {
    const stamp = { tensorflowVersion: '2.21.0', source: 'tensorflow-cpu==2.21.0', wheel: 'w.whl', sha256: 'ab12' };
    writeFileSync(path.join(dir, 'deps', 'pipe-libtensorflow.json'), JSON.stringify(stamp));
  }
  return dir;
}

test('flavourInfo: a missing package says how to install it', () => {
  const root = tempDir();
  const info = flavourInfo('gpu', { root });
  assert.is(info.ready, false);
  assert.is(info.packageDir, undefined);
  assert.equal(info.problems, ['@tensorflow/tfjs-node-gpu is not installed: run `npm run setup -- --gpu`']);
});

test('flavourInfo: installed without native parts is not ready', () => {
  const root = tempDir();
  fakePackage(root, '@tensorflow/tfjs-node', 'installed');
  const info = flavourInfo('cpu', { root });
  assert.is(info.packageVersion, '4.22.0');
  assert.is(info.ready, false);
  assert.is(info.libtensorflowPresent, false);
  assert.is(info.problems.length, 2);
  assert.match(info.problems[0] ?? '', 'no native TensorFlow library');
  assert.match(info.problems[1] ?? '', `lib/napi-v${Math.min(8, napi)}/tfjs_binding.node`);
});

test('flavourInfo: the library without the binding is not ready', () => {
  const root = tempDir();
  fakePackage(root, '@tensorflow/tfjs-node', 'lib');
  const info = flavourInfo('cpu', { root });
  assert.is(info.libtensorflowPresent, true);
  assert.is(info.bindingPath, undefined);
  assert.is(info.ready, false);
});

test('flavourInfo: a set-up package reports binding and libtensorflow stamp', () => {
  const root = tempDir();
  const dir = fakePackage(root, '@tensorflow/tfjs-node', 'ready-with-stamp');
  const info = flavourInfo('cpu', { root: path.join(root, 'some', 'subdir') }); // resolves upwards
  assert.is(info.ready, true);
  assert.equal(info.problems, []);
  assert.is(info.packageDir, dir);
  assert.is(info.bindingPath, path.join(dir, 'lib', `napi-v${Math.min(8, napi)}`, 'tfjs_binding.node'));
  assert.equal(info.libtensorflow, {
    tensorflowVersion: '2.21.0',
    source: 'tensorflow-cpu==2.21.0',
    wheel: 'w.whl',
    sha256: 'ab12',
  });
  assert.equal(runtimeFingerprint('cpu', { root }), {
    flavour: 'cpu',
    tfjs: '@tensorflow/tfjs-node@4.22.0',
    libtensorflow: '2.21.0',
    libtensorflowSha256: 'ab12',
    platform: `${process.platform}-${process.arch}`,
  });
});

test('flavourInfo: this repository has the cpu flavour installed', () => {
  const info = flavourInfo('cpu');
  assert.is(info.packageName, '@tensorflow/tfjs-node');
  assert.ok(info.packageVersion, 'package.json of @tensorflow/tfjs-node readable');
});

const smiOutput = [
  'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d3c0a1e-aaaa-bbbb-cccc-000000000000)',
  '  MIG 1g.5gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)',
  'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-7e9f0b2c-aaaa-bbbb-cccc-111111111111)',
  'GPU 2: Tesla T4',
  '',
].join('\n');

test('parseNvidiaSmiList: GPU lines with and without UUID, MIG lines skipped', () => {
  assert.equal(parseNvidiaSmiList(smiOutput), [
    { index: 0, name: 'NVIDIA A100-SXM4-40GB', uuid: 'GPU-5d3c0a1e-aaaa-bbbb-cccc-000000000000' },
    { index: 1, name: 'NVIDIA A100-SXM4-40GB', uuid: 'GPU-7e9f0b2c-aaaa-bbbb-cccc-111111111111' },
    { index: 2, name: 'Tesla T4' },
  ]);
  assert.equal(parseNvidiaSmiList('No devices were found\n'), []);
});

test('visibleGpus: CUDA_VISIBLE_DEVICES semantics', () => {
  const devices = parseNvidiaSmiList(smiOutput);
  const indices = (value: string | undefined) => visibleGpus(devices, value).map((d) => d.index);
  assert.equal(indices(undefined), [0, 1, 2]);
  assert.equal(indices(''), []);
  assert.equal(indices('-1'), []);
  assert.equal(indices('1'), [1]);
  assert.equal(indices('2,0'), [2, 0]);
  assert.equal(indices('0,7,1'), [0], 'stops at the first invalid entry');
  assert.equal(indices('0,0'), [0], 'a repeated device stops the list');
  assert.equal(indices('GPU-7e9f'), [1], 'UUID prefix');
});

function fakeNvidiaSmi(script: string): NodeJS.ProcessEnv {
  const bin = tempDir();
  const file = path.join(bin, 'nvidia-smi');
  writeFileSync(file, `#!/bin/sh\n${script}\n`);
  chmodSync(file, 0o755);
  return { PATH: `${bin}:/usr/bin:/bin` };
}

test('countGpus: 0 without nvidia-smi', () => {
  assert.is(countGpus({ env: { PATH: tempDir() } }), 0);
});

test('countGpus: runs nvidia-smi -L and respects CUDA_VISIBLE_DEVICES', () => {
  const env = fakeNvidiaSmi(`[ "$1" = "-L" ] || exit 3\nprintf 'GPU 0: A (UUID: GPU-a)\\nGPU 1: B (UUID: GPU-b)\\n'`);
  assert.is(countGpus({ env }), 2);
  assert.is(countGpus({ env: { ...env, CUDA_VISIBLE_DEVICES: '1' } }), 1);
  assert.is(countGpus({ env: { ...env, CUDA_VISIBLE_DEVICES: '' } }), 0);
  assert.equal(gpuIds({ env: { ...env, CUDA_VISIBLE_DEVICES: '1,0' } }), ['GPU-b', 'GPU-a']);
});

test('countGpus: 0 when nvidia-smi fails (no driver)', () => {
  const env = fakeNvidiaSmi('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver"; exit 9');
  assert.is(countGpus({ env }), 0);
});

test('resolveFlavour: cpu is cpu; gpu needs the gpu flavour set up', () => {
  const root = tempDir();
  assert.is(resolveFlavour('cpu', { root }), 'cpu');
  try {
    resolveFlavour('gpu', { root });
    assert.unreachable('should throw');
  } catch (error) {
    assert.instance(error, FlavourError);
    assert.is((error as FlavourError).reason, 'flavour-not-installed');
    assert.is(
      (error as Error).message,
      "backend 'gpu' was requested, but @tensorflow/tfjs-node-gpu is not installed: run `npm run setup -- --gpu`",
    );
  }
  fakePackage(root, '@tensorflow/tfjs-node-gpu', 'lib');
  assert.throws(() => resolveFlavour('gpu', { root }), /has no native binding/);
  fakePackage(root, '@tensorflow/tfjs-node-gpu', 'ready');
  assert.is(resolveFlavour('gpu', { root, gpuCount: () => 0 }), 'gpu', 'runs on the CPU without a GPU');
});

test('resolveFlavour: auto picks gpu only when it is set up and a GPU is visible', () => {
  const root = tempDir();
  let asked = 0;
  const gpus = (n: number) => () => {
    asked++;
    return n;
  };
  assert.is(resolveFlavour('auto', { root, gpuCount: gpus(4) }), 'cpu');
  assert.is(asked, 0, 'no GPU query without the gpu flavour');
  fakePackage(root, '@tensorflow/tfjs-node-gpu', 'ready');
  assert.is(resolveFlavour('auto', { root, gpuCount: gpus(0) }), 'cpu');
  assert.is(resolveFlavour('auto', { root, gpuCount: gpus(1) }), 'gpu');
});

test.run();
