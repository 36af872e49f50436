// `pipe doctor`: what a user needs to know when something is off with the installation. Each
import type { CommandStatus } from '../core/io.ts';
// check is one line, ok or a problem with the command that fixes it; native TensorFlow is loaded in
// a child process (it can crash, and only one flavour can live in a process).

import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type FlavourInfo, flavours, listGpus, setupCommand } from '../exec/runtime.ts';

const run = promisify(execFile);

export type CheckStatus = 'ok' | 'info' | 'problem';

export interface Check {
  status: CheckStatus;
  /** What was checked and what was found, on one line. */
  text: string;
  /** For a problem: the command or step that fixes it. */
  fix?: string;
}

export interface DoctorOptions {
  /** The repository (default: the one this file is in). */
  root?: string;
  env?: NodeJS.ProcessEnv;
}

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Prints one line per check and returns 0 when nothing needs fixing, 1 otherwise. */
export async function doctor(out: (line: string) => void, options: DoctorOptions = {}): Promise<CommandStatus> {
  out('pipe doctor');
  const checks = await runChecks(options);
  for (const check of checks) {
    const mark = check.status === 'ok' ? 'ok  ' : check.status === 'info' ? '--  ' : 'FAIL';
    out(`  ${mark}  ${check.text}`);
    if (check.fix !== undefined) out(`        fix: ${check.fix}`);
  }
  const problems = checks.filter((c) => c.status === 'problem').length;
  out(
    problems === 0
      ? 'Everything pipe needs is in place.'
      : `${problems} problem${problems === 1 ? '' : 's'} found: apply the fixes above, then run \`pipe doctor\` again.`,
  );
  return problems === 0 ? 'ok' : 'failed';
}

export async function runChecks(options: DoctorOptions = {}): Promise<Check[]> {
  const root = options.root ?? repoRoot;
  const env = options.env ?? process.env;
  const checks: Check[] = [checkNode(), await checkNpm(env)];
  const installed = flavours({ root, env });
  for (const info of installed) {
    checks.push(...(await checkFlavour(info, root, env)));
  }
  checks.push(checkGpus(installed, env));
  checks.push(...(await checkMlflow(root, env)));
  checks.push(await checkRedis(root, env));
  return checks;
}

function major(version: string): number {
  return Number(version.replace(/^v/, '').split('.')[0]);
}

function checkNode(): Check {
  const version = process.versions.node;
  return major(version) >= 20
    ? { status: 'ok', text: `Node.js ${version}` }
    : {
        status: 'problem',
        text: `Node.js ${version}: pipe needs Node.js >= 20`,
        fix: 'install Node.js 20 or newer (NodeSource package or nvm), then `npm run setup`',
      };
}

async function checkNpm(env: NodeJS.ProcessEnv): Promise<Check> {
  let version: string;
  try {
    version = (await run('npm', ['--version'], { env, timeout: 30_000 })).stdout.trim();
  } catch {
    return { status: 'problem', text: 'npm not found', fix: 'install npm >= 11: `npm install -g npm@11`' };
  }
  return major(version) >= 11
    ? { status: 'ok', text: `npm ${version} (honours "allowScripts")` }
    : {
        status: 'problem',
        text: `npm ${version}: npm >= 11 is needed, older ones ignore "allowScripts" and run tfjs-node's failing download`,
        fix: '`npm install -g npm@11`, then `npm run setup`',
      };
}

interface LoadResult {
  backend: string;
  tfVersion: string;
  tfjsVersion: string;
}

// Runs in a child node: loads the flavour, prints what it got as JSON.
const LOAD_SCRIPT = `
const name = process.argv[1];
const tf = require(name);
tf.tidy(() => tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])).dataSync());
const binding = tf.backend().binding;
console.log(JSON.stringify({
  backend: tf.getBackend(),
  tfVersion: binding && binding.TF_Version ? String(binding.TF_Version) : 'unknown',
  tfjsVersion: require(name + '/package.json').version,
}));
`;

async function loadInChild(info: FlavourInfo, root: string, env: NodeJS.ProcessEnv): Promise<LoadResult | Error> {
  try {
    const { stdout } = await run(process.execPath, ['-e', LOAD_SCRIPT, info.packageName], {
      cwd: root,
      env: { ...env, TF_CPP_MIN_LOG_LEVEL: '3' },
      timeout: 180_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    const last = stdout.trim().split('\n').pop() ?? '';
    return JSON.parse(last) as LoadResult;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    const reason = stderr.split('\n').find((line) => /Error|error:/.test(line)) ?? (error as Error).message;
    return new Error(reason.trim().slice(0, 300));
  }
}

async function checkFlavour(info: FlavourInfo, root: string, env: NodeJS.ProcessEnv): Promise<Check[]> {
  const fix = `\`${setupCommand(info.flavour)}\``;
  const label = `${info.packageName} (${info.flavour} flavour)`;
  if (info.packageDir === undefined) {
    return info.flavour === 'gpu'
      ? [{ status: 'info', text: `${label}: not installed (optional, for NVIDIA GPUs: ${fix})` }]
      : [{ status: 'problem', text: `${label}: not installed`, fix }];
  }
  const checks: Check[] = [];
  const origin = info.libtensorflow
    ? `libtensorflow ${info.libtensorflow.tensorflowVersion} from ${info.libtensorflow.source}`
    : info.libtensorflowPresent
      ? 'libtensorflow of unknown origin (not placed by scripts/setup.sh)'
      : 'no libtensorflow';
  if (!info.ready) {
    checks.push({
      status: 'problem',
      text: `${label} ${info.packageVersion ?? '?'}: ${origin}, ${info.bindingPath ? 'binding built' : 'no native binding'}`,
      fix,
    });
    return checks;
  }
  checks.push({ status: 'ok', text: `${label} ${info.packageVersion ?? '?'}: binding built, ${origin}` });
  if (info.flavour === 'gpu') checks.push(checkCudaLibraries(info, fix));
  const loaded = await loadInChild(info, root, env);
  if (loaded instanceof Error) {
    checks.push({ status: 'problem', text: `${info.packageName} does not load: ${loaded.message}`, fix });
  } else if (loaded.backend !== 'tensorflow') {
    checks.push({
      status: 'problem',
      text: `${info.packageName} loads with backend '${loaded.backend}', not the native 'tensorflow'`,
      fix,
    });
  } else {
    checks.push({
      status: 'ok',
      text: `${info.packageName} loads: backend tensorflow, libtensorflow (TF_Version) ${loaded.tfVersion}`,
    });
  }
  return checks;
}

/** scripts/setup.sh links the CUDA 12 libraries from the download cache into deps/lib. */
function checkCudaLibraries(info: FlavourInfo, fix: string): Check {
  const cudart = path.join(info.packageDir ?? '', 'deps', 'lib', 'libcudart.so.12');
  return existsSync(cudart) // follows the symlink: false when the cache was removed
    ? { status: 'ok', text: `CUDA 12 libraries linked (${cudart})` }
    : {
        status: 'problem',
        text: 'CUDA 12 libraries missing from the gpu flavour (deps/lib/libcudart.so.12): it cannot use a GPU',
        fix,
      };
}

function checkGpus(installed: FlavourInfo[], env: NodeJS.ProcessEnv): Check {
  const gpus = listGpus({ env });
  const visible = env['CUDA_VISIBLE_DEVICES'];
  const filter = visible === undefined ? '' : ` (CUDA_VISIBLE_DEVICES=${visible})`;
  const gpuReady = installed.some((i) => i.flavour === 'gpu' && i.ready);
  if (gpus.length === 0) {
    return {
      status: 'info',
      text: `GPUs: none visible${filter}${gpuReady ? '; backend auto uses cpu, gpu runs on the CPU' : ''}`,
    };
  }
  const names = gpus.map((g) => `${g.index}: ${g.name}`).join(', ');
  if (!gpuReady) {
    return {
      status: 'info',
      text: `GPUs: ${gpus.length} visible${filter} (${names}), but the gpu flavour is not set up: pipe uses the CPU (${`\`${setupCommand('gpu')}\``} to use them)`,
    };
  }
  return { status: 'ok', text: `GPUs: ${gpus.length} visible${filter}: ${names}` };
}

/** Redis is only needed for `pipe worker` clusters (and their tests): missing is not a problem. */
async function checkRedis(root: string, env: NodeJS.ProcessEnv): Promise<Check> {
  const bin = path.join(root, '.redis', 'bin', 'redis-server');
  if (!existsSync(bin)) {
    return { status: 'info', text: `Redis: ${bin} missing (only \`pipe worker\` clusters need it, and only on the Redis host)`, fix: '`npm run setup`' };
  }
  try {
    const version = /v=(\S+)/.exec((await run(bin, ['--version'], { env, timeout: 10_000 })).stdout)?.[1] ?? '?';
    return { status: 'ok', text: `Redis ${version} (Debian's redis-server) for pipe worker clusters: ${bin}` };
  } catch (error) {
    return { status: 'problem', text: `Redis: ${bin} does not run: ${(error as Error).message.split('\n')[0]}`, fix: '`rm -rf .redis && npm run setup`' };
  }
}

/** The version pinned in scripts/setup-mlflow.txt (what `npm run setup` installs). */
function pinnedMlflow(root: string): string | undefined {
  try {
    return /^mlflow==(\S+)/m.exec(readFileSync(path.join(root, 'scripts', 'setup-mlflow.txt'), 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

async function checkMlflow(root: string, env: NodeJS.ProcessEnv): Promise<Check[]> {
  const checks: Check[] = [];
  const uri = env['MLFLOW_TRACKING_URI'];
  const external = uri !== undefined && uri !== '';
  if (external) {
    checks.push(
      /^https?:\/\//.test(uri)
        ? { status: 'ok', text: `MLflow: MLFLOW_TRACKING_URI=${uri} (runs are logged there; no embedded server)` }
        : {
            status: 'problem',
            text: `MLflow: MLFLOW_TRACKING_URI=${uri} is not an http(s) server URL; pipe talks to an MLflow server over HTTP`,
            fix: 'set MLFLOW_TRACKING_URI=http://host:port, or unset it to use the embedded server',
          },
    );
  }
  const venvPython = path.join(root, '.venv', 'bin', 'python');
  const mlflowBin = path.join(root, '.venv', 'bin', 'mlflow');
  const pinned = pinnedMlflow(root);
  const missing: CheckStatus = external ? 'info' : 'problem';
  if (!existsSync(mlflowBin)) {
    checks.push({ status: missing, text: `MLflow: no embedded server (${mlflowBin} missing)`, fix: '`npm run setup`' });
    return checks;
  }
  let version: string;
  try {
    const script = 'import importlib.metadata as m; print(m.version("mlflow"))';
    version = (await run(venvPython, ['-c', script], { env, timeout: 60_000 })).stdout.trim();
  } catch {
    checks.push({ status: missing, text: `MLflow: ${venvPython} cannot import mlflow`, fix: '`npm run setup`' });
    return checks;
  }
  const role = external ? 'embedded server available (unused while MLFLOW_TRACKING_URI is set)' : 'embedded server';
  if (pinned !== undefined && version !== pinned) {
    checks.push({
      status: missing,
      text: `MLflow ${version} in .venv, expected ${pinned} (scripts/setup-mlflow.txt)`,
      fix: '`npm run setup`',
    });
  } else {
    checks.push({ status: 'ok', text: `MLflow ${version}: ${role} from ${mlflowBin}` });
  }
  return checks;
}

