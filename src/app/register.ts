// `pipe register RUN|MODEL NAME [--alias ALIAS]...`: a new version of registered model NAME in
// MLflow's Model Registry, from the LoggedModel of a run, with aliases.
//
// RUN is a pipe run directory (runs/<pipeline>/<run-id>, a sweep trial's directory) or a pipe run
// id: the registration goes into that run's journal and is sent from there, so it waits for
// `pipe sync` when the server is down, like the run's other records. MODEL is a LoggedModel id
// (m-…) or an MLflow run id: registered directly on the project's tracking server.

import { existsSync, readdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { InputError, UnavailableError } from '../core/errors.ts';
import type { CommandStatus } from '../core/io.ts';
import { Journal, JOURNAL_FILE, lockJournal, registerModel, replayJournal, ReplaySession, unlockJournal } from '../tracking/journal.ts';
import { MLflowError, type MLflowClient } from '../tracking/mlflow-client.ts';
import { projectClient } from '../tracking/registry.ts';
import { clientForJournal } from '../tracking/sync.ts';

export interface RegisterOptions {
  projectDir: string;
  /** A run directory, a pipe run id, a LoggedModel id or an MLflow run id. */
  target: string;
  name: string;
  aliases: string[];
  env?: NodeJS.ProcessEnv;
  print: (line: string) => void;
}

export async function registerCommand(opts: RegisterOptions): Promise<CommandStatus> {
  checkName(opts.name, opts.aliases);
  const runDir = findRunDir(opts.projectDir, opts.target);
  if (runDir !== undefined) return registerFromJournal(opts, runDir);
  if (/^m-[0-9a-f]+$/.test(opts.target) || /^[0-9a-f]{32}$/.test(opts.target)) return registerOnServer(opts);
  throw new InputError(
    `pipe register ${opts.target}: not a run directory with an MLflow journal, a pipe run id under runs/, ` +
      'a logged model id (m-…) or an MLflow run id',
  );
}

/** Appends the registration to the run's journal and sends what the journal holds. */
export async function registerFromJournal(opts: RegisterOptions, runDir: string): Promise<CommandStatus> {
  const where = relative(opts.projectDir, runDir) || runDir;
  if (!lockJournal(runDir)) throw new UnavailableError(`${where} is being recorded by a running pipe process; register it when the run has ended`);
  try {
    const journal = Journal.open(runDir);
    if (journal === undefined) throw new InputError(`${where}: no MLflow journal (${JOURNAL_FILE})`);
    const ref = [...journal.all()].reverse().find((e) => e.op.kind === 'create-logged-model')?.op;
    if (ref?.kind !== 'create-logged-model') throw new InputError(`${where}: the run logged no model (no evaluate stage finished)`);
    const before = journal.versions.length;
    journal.append({ kind: 'register-model', ref: ref.ref, name: opts.name, aliases: opts.aliases });
    let client: MLflowClient;
    try {
      client = await clientForJournal(opts.projectDir, journal, opts.env);
    } catch (error) {
      opts.print(`${where}: registration kept in the run's journal (${(error as Error).message}); \`pipe sync\` sends it`);
      return 'failed';
    }
    const result = await replayJournal(journal, client, new ReplaySession(true));
    const made = journal.versions.slice(before).find((v) => v.name === opts.name);
    if (made === undefined) {
      opts.print(`${where}: registration kept in the run's journal (${result.error?.message ?? 'not sent'}); \`pipe sync\` sends it`);
      return 'failed';
    }
    printVersion(opts, made.version);
    return 'ok';
  } finally {
    unlockJournal(runDir);
  }
}

async function registerOnServer(opts: RegisterOptions): Promise<CommandStatus> {
  const client = await projectClient(opts.projectDir, opts.env);
  try {
    let modelId = opts.target;
    let runId: string | undefined;
    if (!opts.target.startsWith('m-')) {
      runId = opts.target;
      const run = (await client.getRun(runId)) as { outputs?: { model_outputs?: Array<{ model_id: string }> } };
      const last = run.outputs?.model_outputs?.at(-1)?.model_id;
      if (last === undefined) throw new InputError(`MLflow run ${runId} on ${client.uri} has no logged model`);
      modelId = last;
    }
    const model = await client.getLoggedModel(modelId);
    const version = await registerModel(client, { modelId, artifactUri: model.info.artifact_uri }, runId ?? model.info.source_run_id, opts.name, opts.aliases, false);
    printVersion(opts, version.version);
    return 'ok';
  } catch (error) {
    if (error instanceof MLflowError) {
      if (error.kind === 'unavailable') throw new UnavailableError(error.message, { cause: error });
      throw new InputError(error.message, { cause: error });
    }
    throw error;
  }
}

function printVersion(opts: RegisterOptions, version: string): void {
  const aliases = opts.aliases.map((a) => ` models:/${opts.name}@${a}`).join('');
  opts.print(`registered ${opts.name} version ${version}: models:/${opts.name}/${version}${aliases}`);
}

/** A run directory given as a path, or a pipe run id (or sweep id/trial) under runs/<pipeline>/. */
export function findRunDir(projectDir: string, target: string): string | undefined {
  const direct = resolve(projectDir, target);
  if (existsSync(join(direct, JOURNAL_FILE))) return direct;
  const runsDir = join(projectDir, 'runs');
  if (!existsSync(runsDir)) return undefined;
  for (const pipeline of readdirSync(runsDir)) {
    const candidate = join(runsDir, pipeline, target);
    if (existsSync(join(candidate, JOURNAL_FILE))) return candidate;
  }
  return undefined;
}

function checkName(name: string, aliases: string[]): void {
  if (name.trim() === '' || /[/@:]/.test(name)) {
    throw new InputError(`pipe register: model name "${name}": expected a name without '/', '@' or ':' (it becomes models:/NAME/VERSION)`);
  }
  for (const alias of aliases) {
    if (!/^[A-Za-z0-9_-]+$/.test(alias) || /^v\d+$/.test(alias) || alias === 'latest') {
      throw new InputError(`--alias ${alias}: expected letters, digits, '_' or '-' (not 'latest' or v<number>: MLflow reserves them)`);
    }
  }
}
