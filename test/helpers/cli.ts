// Drives the real `pipe` command in a directory, as a user would.

import { mkdtempSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';

export const pipeBin = fileURLToPath(new URL('../../bin/pipe.js', import.meta.url));

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export function project(files: Record<string, string> = {}): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pipe-cli-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return dir;
}

export function startPipe(cwd: string, args: string[], env: Record<string, string> = {}): ResultPromise {
  return execa(process.execPath, [pipeBin, ...args], {
    cwd,
    env: { PIPE_NO_TRACK: '1', CI: '1', ...env },
    reject: false,
    stdin: 'ignore',
  });
}

export async function pipe(cwd: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const result = await startPipe(cwd, args, env);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}
