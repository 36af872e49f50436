// One error type for every condition a user can cause. Each carries a `code` that says what kind of
// failure it is; the CLI (src/cli/exit-codes.ts) is the one place that turns codes into exit codes.
// Anything thrown that is not a PipeError is a bug, and is reported as one.

/**
 * What kind of failure an error is:
 * - `usage`: the command line is wrong (unknown option, missing argument, bad value);
 * - `invalid-input`: a file the user gave is wrong (pipeline, params, weights, images, a model directory);
 * - `unavailable`: something outside pipe is not there or not answering (a server, a URL, a GPU, a library);
 * - `stage-failed`: a stage's own work failed (reported in the stage table; the run goes on without it);
 * - `interrupted`: the user or a signal stopped the work.
 */
export type ErrorCode = 'usage' | 'invalid-input' | 'unavailable' | 'stage-failed' | 'interrupted';

export interface PipeErrorOptions {
  cause?: unknown;
  /** A file the error is about, shown before the message when the message does not name it. */
  file?: string;
  /** What the user can do about it, printed on its own line under the message. */
  hint?: string;
}

export class PipeError extends Error {
  readonly code: ErrorCode;
  readonly file: string | undefined;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: PipeErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.file = options.file;
    this.hint = options.hint;
  }
}

/** The command line is wrong: exit 2 with the message (and no stack). */
export class UsageError extends PipeError {
  constructor(message: string, options?: PipeErrorOptions) {
    super('usage', message, options);
  }
}

/** A file or value the user gave is wrong. */
export class InputError extends PipeError {
  constructor(message: string, options?: PipeErrorOptions) {
    super('invalid-input', message, options);
  }
}

/** Something pipe depends on (a server, a URL, a device, a native library) is not available. */
export class UnavailableError extends PipeError {
  constructor(message: string, options?: PipeErrorOptions) {
    super('unavailable', message, options);
  }
}

/** A stage's work failed; the message is what the stage table shows. */
export class StageError extends PipeError {
  constructor(message: string, options?: PipeErrorOptions) {
    super('stage-failed', message, options);
  }
}

/** A signal stopped the work (after the running stages were stopped and the state saved). */
export class InterruptedError extends PipeError {
  /** SIGINT, SIGTERM or SIGHUP: the exit code is 128 + its number, as a shell reports it. */
  readonly signal: string;

  constructor(signal: string, message: string, options?: PipeErrorOptions) {
    super('interrupted', message, options);
    this.signal = signal;
  }
}

export function isPipeError(error: unknown): error is PipeError {
  return error instanceof PipeError;
}

/** The message of anything thrown, for logs and stage tables. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Ends an exhaustive switch: the compiler checks that `value` cannot happen. */
export function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
