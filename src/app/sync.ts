// `pipe sync`: sends what the journal of each run holds to its MLflow server, and says what it did.

import { relative } from 'node:path';
import type { CommandStatus } from '../core/io.ts';
import { JOURNAL_FILE } from '../tracking/journal.ts';
import type { MLflowError } from '../tracking/mlflow-client.ts';
import { syncRuns, type SyncOptions } from '../tracking/sync.ts';

export interface SyncCommandOptions {
  projectDir: string;
  env?: NodeJS.ProcessEnv;
  /** Where lines for the user go (default: stdout). */
  print?: (line: string) => void;
}

/** `pipe sync`: 0 when nothing is left to send, 1 otherwise. */
export async function syncCommand(opts: SyncCommandOptions): Promise<CommandStatus> {
  const print = opts.print ?? ((line: string) => process.stdout.write(line + '\n'));
  const syncOpts: SyncOptions = { projectDir: opts.projectDir };
  if (opts.env !== undefined) syncOpts.env = opts.env;
  const report = await syncRuns(syncOpts);
  const rel = (d: string): string => relative(opts.projectDir, d) || d;
  for (const d of report.orphansMarked) print(`${rel(d)}: its runner is gone; marked KILLED`);
  for (const r of report.runs) {
    if (r.skipped !== undefined) {
      print(`${rel(r.runDir)}: not sent: ${r.skipped}`);
      continue;
    }
    const res = r.result!;
    const parts = [`sent ${res.sent} request(s) to ${r.uri}`];
    if (res.deduplicated > 0) parts.push(`${res.deduplicated} metric point(s) were already there`);
    if (res.rejected > 0) parts.push(`${res.rejected} rejected by the server (see ${JOURNAL_FILE})`);
    if (res.pending > 0) parts.push(`${res.pending} still pending: ${describeError(res.error)}`);
    print(`${rel(r.runDir)}: ${parts.join('; ')}`);
  }
  if (report.runs.length === 0 && report.orphansMarked.length === 0) print('Nothing to sync: every run is on its MLflow server.');
  return report.pending === 0 ? 'ok' : 'failed';
}

function describeError(error: MLflowError | undefined): string {
  return error?.message ?? 'unknown error';
}
