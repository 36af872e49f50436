// The one place that decides exit codes: 0 success, 1 a failed run or an unavailable service,
// 2 an invalid pipeline, params or command line, 129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM.

import { InterruptedError, isPipeError, type ErrorCode } from '../core/errors.ts';
import type { CommandStatus } from '../core/io.ts';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_INVALID = 2;
export const EXIT_SIGHUP = 129;
export const EXIT_SIGINT = 130;
export const EXIT_SIGTERM = 143;

const bySignal: Record<string, number> = { SIGHUP: EXIT_SIGHUP, SIGINT: EXIT_SIGINT, SIGTERM: EXIT_SIGTERM };

const byStatus: Record<CommandStatus, number> = { ok: EXIT_OK, failed: EXIT_FAILED, invalid: EXIT_INVALID };

const byErrorCode: Record<ErrorCode, number> = {
  usage: EXIT_INVALID,
  'invalid-input': EXIT_INVALID,
  unavailable: EXIT_FAILED,
  'stage-failed': EXIT_FAILED,
  interrupted: EXIT_SIGINT,
};

export function exitCodeOfStatus(status: CommandStatus): number {
  return byStatus[status];
}

/** The exit code for an error that ended a command: its code's, or 1 for anything unexpected. */
export function exitCodeOfError(error: unknown): number {
  if (error instanceof InterruptedError) return bySignal[error.signal] ?? EXIT_SIGINT;
  return isPipeError(error) ? byErrorCode[error.code] : EXIT_FAILED;
}
