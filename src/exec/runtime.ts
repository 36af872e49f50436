// Facts about the native TensorFlow runtime, read from disk WITHOUT loading tfjs: the executor
// fingerprints stages with them on every run, so they must stay cheap (a few stats and two small
// JSON reads; `nvidia-smi -L` only when asked for GPUs and nvidia-smi exists).
//
// scripts/setup.sh builds each flavour's native part and leaves `deps/pipe-libtensorflow.json` in
// the package: the TensorFlow version, the wheel and its sha256 that libtensorflow came from.

import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Flavour, RequestedFlavour } from '../core/stage-kind.ts';
import { UnavailableError, unreachable } from '../core/errors.ts';

export const FLAVOUR_PACKAGES: Readonly<Record<Flavour, string>> = {
  cpu: '@tensorflow/tfjs-node',
  gpu: '@tensorflow/tfjs-node-gpu',
};

/** The command that installs a flavour, for messages. */
export function setupCommand(flavour: Flavour): string {
  return flavour === 'gpu' ? 'npm run setup -- --gpu' : 'npm run setup';
}

/** Written by scripts/setup.sh (scripts/setup-tf.py) as `<package>/deps/pipe-libtensorflow.json`. */
export interface LibtensorflowStamp {
  /** TensorFlow version of the wheel, e.g. '2.21.0'. */
  tensorflowVersion: string;
  /** The wheel as a pip requirement, e.g. 'tensorflow-cpu==2.21.0'. */
  source: string;
  /** The wheel's file name. */
  wheel: string;
  /** The wheel's sha256 (PyPI's). */
  sha256: string;
}

export interface FlavourInfo {
  flavour: Flavour;
  packageName: string;
  /** The package's directory, when installed. */
  packageDir?: string;
  /** `version` of the package's package.json, when installed. */
  packageVersion?: string;
  /** The native binding tfjs loads (lib/napi-v<N>/tfjs_binding.node), when it is built. */
  bindingPath?: string;
  /** True when deps/lib holds a libtensorflow (whoever put it there). */
  libtensorflowPresent: boolean;
  /** Where libtensorflow came from, when scripts/setup.sh placed it. */
  libtensorflow?: LibtensorflowStamp;
  /** Package, binding and libtensorflow all present: loading it should give the 'tensorflow' backend. */
  ready: boolean;
  /** What is missing, each with its fix (empty when ready). */
  problems: string[];
}

export interface RuntimeOptions {
  /** Where package resolution starts (default: this repository's root). */
  root?: string;
  /** Environment for PATH and CUDA_VISIBLE_DEVICES (default: process.env). */
  env?: NodeJS.ProcessEnv;
}

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The directory of an installed package, found as Node would from `root` (without loading it). */
export function findPackageDir(name: string, root: string = repoRoot): string | undefined {
  let dir = path.resolve(root);
  for (;;) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The binding path node-pre-gyp resolves at load time: `binary.module_path` with the highest N-API
 * version in `binary.napi_versions` that this Node.js supports.
 */
export function bindingPathOf(packageDir: string, packageJson: unknown, napi = Number(process.versions.napi)): string | undefined {
  if (!isRecord(packageJson) || !isRecord(packageJson['binary'])) return undefined;
  const binary = packageJson['binary'];
  const modulePath = typeof binary['module_path'] === 'string' ? binary['module_path'] : undefined;
  const versions = Array.isArray(binary['napi_versions'])
    ? binary['napi_versions'].filter((v): v is number => typeof v === 'number' && v <= napi)
    : [];
  if (modulePath === undefined || versions.length === 0) return undefined;
  const best = Math.max(...versions);
  const moduleName = typeof binary['module_name'] === 'string' ? binary['module_name'] : 'tfjs_binding';
  return path.join(packageDir, modulePath.replace('{napi_build_version}', String(best)), `${moduleName}.node`);
}

function readStamp(file: string): LibtensorflowStamp | undefined {
  const stamp = readJson(file);
  if (!isRecord(stamp)) return undefined;
  const { tensorflowVersion, source, wheel, sha256 } = stamp;
  if (typeof tensorflowVersion !== 'string' || typeof source !== 'string') return undefined;
  return {
    tensorflowVersion,
    source,
    wheel: typeof wheel === 'string' ? wheel : '',
    sha256: typeof sha256 === 'string' ? sha256 : '',
  };
}

/** What is installed of one flavour, from its files alone. */
export function flavourInfo(flavour: Flavour, options: RuntimeOptions = {}): FlavourInfo {
  const packageName = FLAVOUR_PACKAGES[flavour];
  const fix = setupCommand(flavour);
  const packageDir = findPackageDir(packageName, options.root);
  if (packageDir === undefined) {
    return {
      flavour,
      packageName,
      libtensorflowPresent: false,
      ready: false,
      problems: [`${packageName} is not installed: run \`${fix}\``],
    };
  }
  const packageJson = readJson(path.join(packageDir, 'package.json'));
  const packageVersion =
    isRecord(packageJson) && typeof packageJson['version'] === 'string' ? packageJson['version'] : undefined;
  const expectedBinding = bindingPathOf(packageDir, packageJson);
  const bindingPath = expectedBinding !== undefined && existsSync(expectedBinding) ? expectedBinding : undefined;
  const lib = path.join(packageDir, 'deps', 'lib');
  const libtensorflowPresent = ['libtensorflow_cc.so.2', 'libtensorflow.so.2.9.1', 'libtensorflow.so'].some((name) =>
    existsSync(path.join(lib, name)),
  );
  const libtensorflow = readStamp(path.join(packageDir, 'deps', 'pipe-libtensorflow.json'));
  const problems: string[] = [];
  if (!libtensorflowPresent) {
    problems.push(`${packageName} has no native TensorFlow library in deps/lib: run \`${fix}\``);
  }
  if (bindingPath === undefined) {
    problems.push(`${packageName} has no native binding (${expectedBinding ?? 'tfjs_binding.node'}): run \`${fix}\``);
  }
  const info: FlavourInfo = {
    flavour,
    packageName,
    packageDir,
    libtensorflowPresent,
    ready: problems.length === 0,
    problems,
  };
  if (packageVersion !== undefined) info.packageVersion = packageVersion;
  if (bindingPath !== undefined) info.bindingPath = bindingPath;
  if (libtensorflow !== undefined) info.libtensorflow = libtensorflow;
  return info;
}

/** Both flavours, cpu first. */
export function flavours(options: RuntimeOptions = {}): FlavourInfo[] {
  return [flavourInfo('cpu', options), flavourInfo('gpu', options)];
}

/**
 * The runtime as it enters a stage's fingerprint: what can change the numbers a TensorFlow stage
 * computes. The GPU count is left out on purpose (it changes where a stage runs, not the recipe).
 */
export type RuntimeFingerprint = {
  flavour: Flavour;
  /** e.g. '@tensorflow/tfjs-node@4.22.0' ('…@missing' when not installed). */
  tfjs: string;
  /** TensorFlow version of libtensorflow ('unknown' when not placed by scripts/setup.sh). */
  libtensorflow: string;
  /** sha256 of the wheel libtensorflow came from ('' when unknown). */
  libtensorflowSha256: string;
  /** `${process.platform}-${process.arch}`. */
  platform: string;
};

export function runtimeFingerprint(flavour: Flavour, options: RuntimeOptions = {}): RuntimeFingerprint {
  const info = flavourInfo(flavour, options);
  return {
    flavour,
    tfjs: `${info.packageName}@${info.packageVersion ?? 'missing'}`,
    libtensorflow: info.libtensorflow?.tensorflowVersion ?? 'unknown',
    libtensorflowSha256: info.libtensorflow?.sha256 ?? '',
    platform: `${process.platform}-${process.arch}`,
  };
}

export interface GpuDevice {
  /** nvidia-smi's index (the CUDA_VISIBLE_DEVICES numbering). */
  index: number;
  name: string;
  /** e.g. 'GPU-5d3c…' (when nvidia-smi prints it). */
  uuid?: string;
}

/** Parses `nvidia-smi -L` ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-…)"); MIG lines are skipped. */
export function parseNvidiaSmiList(output: string): GpuDevice[] {
  const devices: GpuDevice[] = [];
  for (const line of output.split('\n')) {
    const match = /^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?\s*$/.exec(line);
    if (match === null) continue;
    const device: GpuDevice = { index: Number(match[1]), name: match[2] ?? '' };
    if (match[3] !== undefined) device.uuid = match[3];
    devices.push(device);
  }
  return devices;
}

/**
 * The devices CUDA exposes under CUDA_VISIBLE_DEVICES, in its order: entries are indices or
 * (prefixes of) UUIDs; as in CUDA, the list stops at the first entry that names no device
 * (so '' and '-1' hide every GPU). Unset: all devices.
 */
export function visibleGpus(devices: readonly GpuDevice[], cudaVisibleDevices: string | undefined): GpuDevice[] {
  if (cudaVisibleDevices === undefined) return [...devices];
  const visible: GpuDevice[] = [];
  for (const raw of cudaVisibleDevices.split(',')) {
    const entry = raw.trim();
    let match: GpuDevice | undefined;
    if (/^\d+$/.test(entry)) {
      match = devices.find((d) => d.index === Number(entry));
    } else if (/^(GPU|MIG)-/i.test(entry)) {
      const prefix = entry.toLowerCase();
      match = devices.find((d) => d.uuid !== undefined && d.uuid.toLowerCase().startsWith(prefix));
    }
    if (match === undefined || visible.includes(match)) break;
    visible.push(match);
  }
  return visible;
}

/** The first executable `name` on PATH, without spawning anything. */
export function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env['PATH'] ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** NVIDIA GPUs this process may use: `nvidia-smi -L` (none without it), filtered by CUDA_VISIBLE_DEVICES. */
export function listGpus(options: RuntimeOptions = {}): GpuDevice[] {
  const env = options.env ?? process.env;
  const nvidiaSmi = findOnPath('nvidia-smi', env);
  if (nvidiaSmi === undefined) return [];
  let output: string;
  try {
    output = execFileSync(nvidiaSmi, ['-L'], {
      encoding: 'utf8',
      env,
      timeout: 10_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } catch {
    return []; // no driver loaded, no device: nvidia-smi exits non-zero
  }
  return visibleGpus(parseNvidiaSmiList(output), env['CUDA_VISIBLE_DEVICES']);
}

export function countGpus(options: RuntimeOptions = {}): number {
  return listGpus(options).length;
}

/**
 * One id per visible GPU, fit for a child's CUDA_VISIBLE_DEVICES: the UUID when nvidia-smi gives
 * it (unambiguous whatever CUDA_DEVICE_ORDER is), else nvidia-smi's index.
 */
export function gpuIds(options: RuntimeOptions = {}): string[] {
  return listGpus(options).map((gpu) => gpu.uuid ?? String(gpu.index));
}

/** A flavour was asked for that cannot run here (not installed): unavailable. */
export class FlavourError extends UnavailableError {
  readonly reason: 'flavour-not-installed';
  readonly flavour: Flavour;
  constructor(flavour: Flavour, message: string) {
    super(message);
    this.reason = 'flavour-not-installed';
    this.flavour = flavour;
  }
}

export interface ResolveOptions extends RuntimeOptions {
  /** GPU counter (default: countGpus); only called for 'auto' when the gpu flavour is ready. */
  gpuCount?: () => number;
}

/**
 * The flavour to load for a request. 'auto' is 'gpu' when @tensorflow/tfjs-node-gpu is set up and a
 * GPU is visible, else 'cpu'. 'gpu' without the gpu flavour set up throws a FlavourError saying how
 * to install it; 'gpu' without a visible GPU is allowed (TensorFlow then runs on the CPU).
 */
export function resolveFlavour(requested: RequestedFlavour, options: ResolveOptions = {}): Flavour {
  switch (requested) {
    case 'cpu':
      return 'cpu';
    case 'gpu': {
      const gpu = flavourInfo('gpu', options);
      if (!gpu.ready) {
        throw new FlavourError('gpu', `backend 'gpu' was requested, but ${gpu.problems.join('; ')}`);
      }
      return 'gpu';
    }
    case 'auto': {
      if (!flavourInfo('gpu', options).ready) return 'cpu';
      const count = options.gpuCount ?? (() => countGpus(options));
      return count() > 0 ? 'gpu' : 'cpu';
    }
    default: {
      unreachable(requested, 'flavour');
    }
  }
}
