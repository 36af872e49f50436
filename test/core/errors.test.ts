// One error base class: every error pipe means a user to read is a PipeError with a code, the CLI
// turns codes into exit codes (every code has one), and anything else thrown in src/ is a `bug:`.
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  InputError,
  PipeError,
  StageError,
  UnavailableError,
  UsageError,
  isPipeError,
  unreachable,
  type ErrorCode,
} from '../../src/core/errors.ts';
import { EXIT_FAILED, EXIT_INVALID, EXIT_SIGINT, exitCodeOfError } from '../../src/cli/exit-codes.ts';
import { FlavourError } from '../../src/exec/runtime.ts';
import { MLflowError } from '../../src/tracking/mlflow-client.ts';
import { TrackingServerError } from '../../src/tracking/server.ts';
import { QueueUrlError, parseQueueUrl } from '../../src/queue/protocol.ts';
import { download } from '../../src/util/download.ts';
import { extractZip } from '../../src/util/zip.ts';
import { readKerasH5 } from '../../src/ml/keras-h5.ts';

/** What `promise` rejects with (fails when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.unreachable('expected a rejection');
}

function assertError(error: unknown, type: new (...args: never[]) => Error, message: string | RegExp): void {
  assert.ok(error instanceof type, `expected a ${type.name}, got ${String(error)}`);
  if (typeof message === 'string') assert.is(error.message, message);
  else assert.match(error.message, message);
}

const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'pipe-errors-'));

test('each subclass carries its code, its name, and the cause, file and hint it was given', () => {
  const cause = new Error('ENOENT');
  const cases: Array<[PipeError, ErrorCode, string]> = [
    [new UsageError('u'), 'usage', 'UsageError'],
    [new InputError('i', { cause, file: 'p.yaml', hint: 'fix it' }), 'invalid-input', 'InputError'],
    [new UnavailableError('n'), 'unavailable', 'UnavailableError'],
    [new StageError('s'), 'stage-failed', 'StageError'],
    [new PipeError('interrupted', 'stopped'), 'interrupted', 'PipeError'],
  ];
  for (const [error, code, name] of cases) {
    assert.ok(error instanceof Error && isPipeError(error), name);
    assert.is(error.code, code);
    assert.is(error.name, name);
  }
  const input = cases[1]![0];
  assert.is(input.cause, cause);
  assert.is(input.file, 'p.yaml');
  assert.is(input.hint, 'fix it');
  assert.not.ok(isPipeError(new Error('plain')));
});

test('the error classes of the other layers are PipeErrors and keep their own fields', () => {
  const flavour = new FlavourError('gpu', 'gpu is not set up');
  assert.ok(flavour instanceof UnavailableError);
  assert.equal([flavour.name, flavour.reason, flavour.flavour], ['FlavourError', 'flavour-not-installed', 'gpu']);

  const server = new TrackingServerError('mlflow exited', 'exited', { cause: 'x' });
  assert.ok(server instanceof UnavailableError);
  assert.equal([server.name, server.reason, server.cause], ['TrackingServerError', 'exited', 'x']);

  const mlflow = new MLflowError('no such run', 'rejected', 'RESOURCE_DOES_NOT_EXIST', 404);
  assert.ok(mlflow instanceof UnavailableError);
  assert.equal([mlflow.name, mlflow.kind, mlflow.errorCode, mlflow.httpStatus], ['MLflowError', 'rejected', 'RESOURCE_DOES_NOT_EXIST', 404]);

  assert.throws(() => parseQueueUrl('http://x'), (error: unknown) => error instanceof QueueUrlError && error.code === 'usage');
});

test('every error code has an exit code; anything that is not a PipeError exits 1', () => {
  const expected: Record<ErrorCode, number> = {
    usage: EXIT_INVALID,
    'invalid-input': EXIT_INVALID,
    unavailable: EXIT_FAILED,
    'stage-failed': EXIT_FAILED,
    interrupted: EXIT_SIGINT,
  };
  for (const [code, exit] of Object.entries(expected)) {
    assert.is(exitCodeOfError(new PipeError(code as ErrorCode, 'x')), exit, code);
  }
  assert.is(exitCodeOfError(new Error('bug: x')), EXIT_FAILED);
  assert.is(exitCodeOfError('a string'), EXIT_FAILED);
});

test('unreachable says it is a bug and what it got', () => {
  assert.throws(() => unreachable('purple' as never, 'colour'), /^bug: unexpected colour "purple"$/);
});

test('a bad download checksum, an unreadable zip and a file that is not HDF5 are InputErrors naming the file', async () => {
  const dir = tmp();
  assertError(
    await rejection(download({ url: 'http://127.0.0.1:9/x.zip', sha256: 'abc', cacheDir: dir })),
    InputError,
    'download of http://127.0.0.1:9/x.zip: sha256 must be 64 hex digits, got "abc"',
  );
  const notZip = path.join(dir, 'data.zip');
  writeFileSync(notZip, 'not a zip');
  assertError(await rejection(extractZip(notZip, path.join(dir, 'out'))), InputError, new RegExp(`^cannot open zip ${notZip}: `));
  const notH5 = path.join(dir, 'weights.h5');
  writeFileSync(notH5, 'not HDF5 at all, just some text that is long enough');
  assertError(await rejection(readKerasH5(notH5)), InputError, `${notH5} is not an HDF5 file (no HDF5 signature)`);
});

test('a URL that refuses connections is an UnavailableError after the retries', async () => {
  // A port that was just free: nothing listens there.
  const port = await new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
  const url = `http://127.0.0.1:${port}/x.zip`;
  const error = await rejection(download({ url, cacheDir: tmp(), retries: 1, retryDelayMs: 1 }));
  assertError(error, UnavailableError, new RegExp(`^download of ${url} failed after 2 attempts: `));
});

test('every bare Error thrown in src/ is a bug: the rest are PipeErrors', () => {
  const src = fileURLToPath(new URL('../../src/', import.meta.url));
  const files = (dir: string): string[] =>
    readdirSync(dir).flatMap((name) => {
      const full = path.join(dir, name);
      return statSync(full).isDirectory() ? files(full) : full.endsWith('.ts') ? [full] : [];
    });
  const offenders: string[] = [];
  for (const file of files(src)) {
    const text = readFileSync(file, 'utf8');
    for (const match of text.matchAll(/throw new Error\(\s*(.{0,60})/g)) {
      if (!/^[`'"]bug: /.test(match[1] ?? '')) offenders.push(`${path.relative(src, file)}: ${match[0]}`);
    }
    for (const match of text.matchAll(/class (\w+) extends Error\b/g)) {
      if (match[1] !== 'PipeError') offenders.push(`${path.relative(src, file)}: ${match[0]}`);
    }
  }
  assert.equal(offenders, []);
});

test.run();
