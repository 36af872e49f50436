// `pipe sync`: sends what the journal of each run holds to its MLflow server (or, with --to, to
// another one), or drops journals that can never be sent (--drop, --drop-all); says what it did.

import { existsSync, lstatSync, readlinkSync, renameSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { UsageError } from '../core/errors.ts';
import type { CommandStatus } from '../core/io.ts';
import { Journal, JOURNAL_FILE, lockJournal, unlockJournal } from '../tracking/journal.ts';
import type { MLflowError } from '../tracking/mlflow-client.ts';
import { findRunDirs, syncRuns, type SyncOptions } from '../tracking/sync.ts';

/** Where a dropped journal is kept: never sent, but not lost either. */
export const DROPPED_JOURNAL_FILE = 'mlflow-journal.dropped.jsonl';

export interface SyncCommandOptions {
  projectDir: string;
  env?: NodeJS.ProcessEnv;
  /** Where lines for the user go (default: stdout). */
  print?: (line: string) => void;
  /** `--to URI`: send pending journals to this server instead of their own. */
  to?: string;
  /** `--drop RUN_DIR`: discard these runs' pending journals. */
  drop?: string[];
  /** `--drop-all`: discard every pending journal. */
  dropAll?: boolean;
}

/** `pipe sync`: 0 when nothing is left to send, 1 otherwise. */
export async function syncCommand(opts: SyncCommandOptions): Promise<CommandStatus> {
  const print = opts.print ?? ((line: string) => process.stdout.write(line + '\n'));
  const dropping = opts.dropAll === true || (opts.drop ?? []).length > 0;
  if (dropping && opts.to !== undefined) throw new UsageError('pipe sync: --to sends journals and --drop discards them: give one of them');
  if (dropping) return dropJournals(opts, print);
  if (opts.to !== undefined && !/^https?:\/\/[^/\s]+/.test(opts.to)) throw new UsageError(`pipe sync --to ${opts.to}: expected an MLflow server URL (http://HOST:PORT)`);
  const syncOpts: SyncOptions = { projectDir: opts.projectDir };
  if (opts.env !== undefined) syncOpts.env = opts.env;
  if (opts.to !== undefined) syncOpts.to = opts.to.replace(/\/+$/, '');
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
  if (report.pending > 0 && opts.to === undefined) print('A server that will not come back: `pipe sync --to URI` sends the runs elsewhere, `pipe sync --drop RUN_DIR` discards them.');
  return report.pending === 0 ? 'ok' : 'failed';
}

/**
 * Discards pending journals: each is renamed to mlflow-journal.dropped.jsonl after saying what
 * it held, so that nothing sends it again. A journal a running pipe process holds is left alone.
 */
function dropJournals(opts: SyncCommandOptions, print: (line: string) => void): CommandStatus {
  const rel = (d: string): string => relative(opts.projectDir, d) || d;
  const runDirs = opts.dropAll ? findRunDirs(opts.projectDir) : (opts.drop ?? []).map((d) => namedRunDir(opts.projectDir, d));
  let kept = 0;
  let dropped = 0;
  for (const runDir of runDirs) {
    const journal = Journal.open(runDir);
    const pending = journal?.pending().length ?? 0;
    if (journal === undefined || pending === 0) {
      if (!opts.dropAll) print(`${rel(runDir)}: nothing to drop: every request was sent`);
      continue;
    }
    if (!lockJournal(runDir)) {
      print(`${rel(runDir)}: not dropped: in use by a running pipe process`);
      kept++;
      continue;
    }
    try {
      const tracking = journal.header.tracking;
      renameSync(join(runDir, JOURNAL_FILE), join(runDir, DROPPED_JOURNAL_FILE));
      print(`${rel(runDir)}: dropped ${pending} pending request(s) for ${tracking.embedded ? 'the local MLflow server' : tracking.uri} (kept in ${DROPPED_JOURNAL_FILE}, never sent)`);
      dropped++;
    } finally {
      unlockJournal(runDir);
    }
  }
  if (opts.dropAll && dropped === 0 && kept === 0) print('Nothing to drop: every run is on its MLflow server.');
  return kept === 0 ? 'ok' : 'failed';
}

/** A run directory named on the command line (`runs/demo/latest` too), checked to have a journal. */
function namedRunDir(projectDir: string, named: string): string {
  const dir = resolve(projectDir, named);
  if (!existsSync(join(dir, JOURNAL_FILE)) && !existsSync(join(dir, DROPPED_JOURNAL_FILE))) {
    throw new UsageError(`pipe sync --drop ${named}: not a run directory with tracking data (expected runs/PIPELINE/RUN_ID, holding ${JOURNAL_FILE})`);
  }
  // `runs/demo/latest` is a link: name the run it points to.
  return lstatSync(dir).isSymbolicLink() ? resolve(dirname(dir), readlinkSync(dir)) : dir;
}

function describeError(error: MLflowError | undefined): string {
  return error?.message ?? 'unknown error';
}
