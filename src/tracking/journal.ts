// The write-ahead journal between a run and its MLflow server: the server may go away, and a run
// never fails or loses data because of it.
//
// `<runDir>/mlflow-journal.jsonl` holds one JSON object per line:
//   {"t":"header", ...}                      which server, and the journal's id (tag pipe.journal_id)
//   {"t":"op","seq":n,"at":ms,"op":{...}}    a request, appended before it is sent
//   {"t":"ack","seqs":[n,...],"run":{...}}   the server accepted those requests (create-run: its ids)
//   {"t":"rejected","seqs":[n],"error":".."} the server refused them (4xx): never sent again
//
// An op without ack or rejection is pending. Replay sends pending ops in order, with the times and
// steps they were recorded with. A crash (or a timeout) between send and ack leaves an op whose fate
// is unknown: such "in doubt" ops are reconciled with the server before they are sent again, so
// that each is applied exactly once:
//   create-run      search the experiment for the run tagged pipe.journal_id before creating one;
//   log-batch       drop metric points the server already has (same key, value, timestamp, step);
//                   params and tags are idempotent (same key, same value);
//   upload-artifact a PUT of the same path replaces the file;
//   update-run      idempotent;
//   log-inputs      MLflow keeps one input per (dataset name, digest) and run: idempotent;
//   create-logged-model  search the experiment for the model tagged pipe.model_ref before creating;
//   logged-model params, tags, finalize, outputs, uploads: idempotent;
//   register-model  look for a version of that name from the same logged model before creating one.
// (MLflow's SQL store also ignores an exact duplicate metric row, checked against mlflow 3.17;
// the check above keeps replay exactly-once on stores that do not.)

import { appendFileSync, existsSync, linkSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import {
  MLflowClient,
  MLflowError,
  type DatasetInput,
  type KeyValue,
  type LoggedModelStatus,
  type Metric,
  type RunStatus,
} from './mlflow-client.ts';
import { isPidAlive } from './server.ts';

export const JOURNAL_FILE = 'mlflow-journal.jsonl';
export const JOURNAL_LOCK_FILE = 'mlflow-journal.lock';

export type TrackingRef = { embedded: true } | { embedded: false; uri: string };

export type JournalOp =
  | {
      kind: 'create-run';
      experimentName: string;
      runName: string;
      startTime: number;
      /** Includes pipe.journal_id, which makes an in-doubt creation findable. */
      tags: KeyValue[];
    }
  /** `modelRef`: the metrics measure that logged model (sent with its model_id). */
  | { kind: 'log-batch'; metrics?: Metric[]; params?: KeyValue[]; tags?: KeyValue[]; modelRef?: string }
  /** `file`: a local file read at send time; `text`: content kept in the journal (small files). */
  | { kind: 'upload-artifact'; path: string; file?: string; text?: string; modelRef?: string }
  | { kind: 'update-run'; status: RunStatus; endTime?: number }
  | { kind: 'log-inputs'; datasets: DatasetInput[] }
  /**
   * A LoggedModel of the run, known in later ops by `ref` (unique in the journal); its tags include
   * pipe.model_ref = `<journal id>/<ref>`, which makes an in-doubt creation findable.
   */
  | { kind: 'create-logged-model'; ref: string; name: string; modelType?: string; params: KeyValue[]; tags: KeyValue[] }
  | { kind: 'finalize-logged-model'; ref: string; status: LoggedModelStatus }
  | { kind: 'log-outputs'; ref: string; step: number }
  /** A Model Registry version of the logged model, with aliases. */
  | { kind: 'register-model'; ref: string; name: string; aliases: string[] };

export interface RemoteModel {
  ref: string;
  modelId: string;
  artifactUri: string;
}

export const MODEL_REF_TAG = 'pipe.model_ref';

export interface RemoteRun {
  runId: string;
  experimentId: string;
  artifactUri: string;
}

export interface JournalHeader {
  t: 'header';
  version: 1;
  /** Unique per journal; also the run's tag pipe.journal_id. */
  journalId: string;
  tracking: TrackingRef;
  createdAt: number;
}

export interface JournalEntry {
  seq: number;
  at: number;
  op: JournalOp;
}

type JournalLine =
  | JournalHeader
  | { t: 'op'; seq: number; at: number; op: JournalOp }
  | { t: 'ack'; seqs: number[]; at: number; run?: RemoteRun; model?: RemoteModel; version?: { name: string; version: string } }
  | { t: 'rejected'; seqs: number[]; at: number; error: string };

export class Journal {
  private readonly ops: JournalEntry[] = [];
  private readonly done = new Set<number>();
  private readonly rejections: Array<{ seqs: number[]; error: string }> = [];
  private nextSeq = 1;
  private remote: RemoteRun | undefined;
  private readonly remoteModels = new Map<string, RemoteModel>();
  private readonly registered: Array<{ name: string; version: string }> = [];

  private constructor(
    readonly path: string,
    readonly header: JournalHeader,
  ) {}

  /**
   * A new journal in runDir (fails if one exists), holding its first ops. `first` receives the
   * journal's id (the create-run op tags the run with it). The file appears whole or not at all (a
   * temporary file linked into place), so a runner killed at any instant never leaves a journal whose
   * run can no longer be created: a header without its create-run op.
   */
  static create(
    runDir: string,
    tracking: TrackingRef,
    first: (journalId: string) => Array<{ op: JournalOp; at?: number }> = () => [],
    journalId: string = randomUUID(),
  ): Journal {
    const header: JournalHeader = { t: 'header', version: 1, journalId, tracking, createdAt: Date.now() };
    const path = join(runDir, JOURNAL_FILE);
    const lines: JournalLine[] = [header, ...first(header.journalId).map((e, i) => ({ t: 'op' as const, seq: i + 1, at: e.at ?? Date.now(), op: e.op }))];
    const tmp = `${path}.${process.pid}.${header.journalId}.tmp`;
    writeFileSync(tmp, lines.map((l) => JSON.stringify(l) + '\n').join(''), { flag: 'wx' });
    try {
      linkSync(tmp, path); // EEXIST when runDir already has a journal
    } finally {
      rmSync(tmp, { force: true });
    }
    const journal = new Journal(path, header);
    for (const line of lines) journal.apply(line);
    return journal;
  }

  /** The journal of runDir, or undefined when it has none. A torn last line (a crash) is ignored. */
  static open(runDir: string): Journal | undefined {
    const path = join(runDir, JOURNAL_FILE);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      return undefined;
    }
    let journal: Journal | undefined;
    for (const raw of text.split('\n')) {
      if (raw.trim() === '') continue;
      let line: JournalLine;
      try {
        line = JSON.parse(raw) as JournalLine;
      } catch {
        continue;
      }
      if (line.t === 'header') {
        journal ??= new Journal(path, line);
        continue;
      }
      if (journal === undefined) return undefined;
      journal.apply(line);
    }
    return journal;
  }

  get journalId(): string {
    return this.header.journalId;
  }

  /** The MLflow run, once created. */
  get run(): RemoteRun | undefined {
    return this.remote;
  }

  /** The logged model created for `ref`, once created. */
  model(ref: string): RemoteModel | undefined {
    return this.remoteModels.get(ref);
  }

  /** Model Registry versions created from this journal. */
  get versions(): ReadonlyArray<{ name: string; version: string }> {
    return this.registered;
  }

  get rejected(): ReadonlyArray<{ seqs: number[]; error: string }> {
    return this.rejections;
  }

  append(op: JournalOp, at = Date.now()): number {
    const seq = this.nextSeq;
    this.write({ t: 'op', seq, at, op });
    return seq;
  }

  ack(seqs: number[], created: { run?: RemoteRun; model?: RemoteModel; version?: { name: string; version: string } } = {}): void {
    this.write({ t: 'ack', seqs, at: Date.now(), ...created });
  }

  reject(seqs: number[], error: string): void {
    this.write({ t: 'rejected', seqs, at: Date.now(), error });
  }

  pending(): JournalEntry[] {
    return this.ops.filter((e) => !this.done.has(e.seq));
  }

  all(): readonly JournalEntry[] {
    return this.ops;
  }

  /** True when a terminal status (FINISHED/FAILED/KILLED) was recorded, sent or not. */
  hasTerminalStatus(): boolean {
    return this.ops.some((e) => e.op.kind === 'update-run' && e.op.status !== 'RUNNING');
  }

  private write(line: JournalLine): void {
    appendFileSync(this.path, JSON.stringify(line) + '\n');
    this.apply(line);
  }

  private apply(line: JournalLine): void {
    switch (line.t) {
      case 'header':
        return;
      case 'op':
        this.ops.push({ seq: line.seq, at: line.at, op: line.op });
        this.nextSeq = Math.max(this.nextSeq, line.seq + 1);
        return;
      case 'ack':
        for (const s of line.seqs) this.done.add(s);
        if (line.run !== undefined) this.remote = line.run;
        if (line.model !== undefined) this.remoteModels.set(line.model.ref, line.model);
        if (line.version !== undefined) this.registered.push(line.version);
        return;
      case 'rejected':
        for (const s of line.seqs) this.done.add(s);
        this.rejections.push({ seqs: line.seqs, error: line.error });
        return;
      default: {
        const never: never = line;
        return never;
      }
    }
  }
}

/** Rewrites the journal's header to name another server (`pipe sync --to`); call it holding the lock. */
export function redirectJournal(runDir: string, tracking: TrackingRef): void {
  const path = join(runDir, JOURNAL_FILE);
  const lines = readFileSync(path, 'utf8').split('\n');
  const header = JSON.parse(lines[0] ?? '') as JournalHeader;
  lines[0] = JSON.stringify({ ...header, tracking });
  // Atomically: a crash leaves the old journal or the new one, never half of it.
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, lines.join('\n'));
  renameSync(tmp, path);
}

// ---- the lock: one sender per journal at a time ----

/** Takes `<runDir>/mlflow-journal.lock`; false when a live process (on this host) holds it. */
export function lockJournal(runDir: string): boolean {
  const path = join(runDir, JOURNAL_LOCK_FILE);
  const body = JSON.stringify({ pid: process.pid, host: hostname(), at: Date.now() });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(path, body, { flag: 'wx' });
      return true;
    } catch {
      const holder = readLock(path);
      if (holder === 'unreadable') {
        try {
          if (Date.now() - statSync(path).mtimeMs < 10_000) return false;
        } catch {
          continue;
        }
      } else if (holder.host === hostname() && isPidAlive(holder.pid)) {
        return false;
      } else if (holder.host !== hostname()) {
        return false;
      }
      rmSync(path, { force: true });
    }
  }
  return false;
}

export function unlockJournal(runDir: string): void {
  const path = join(runDir, JOURNAL_LOCK_FILE);
  const holder = readLock(path);
  if (holder !== 'unreadable' && holder.pid === process.pid) rmSync(path, { force: true });
}

function readLock(path: string): { pid: number; host: string } | 'unreadable' {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as { pid?: unknown; host?: unknown };
    if (typeof v.pid === 'number' && typeof v.host === 'string') return { pid: v.pid, host: v.host };
  } catch {
    // fall through
  }
  return 'unreadable';
}

// ---- replay ----

/** What one sender remembers across passes over a journal. */
export class ReplaySession {
  /** Ops whose send was attempted without an answer: reconcile before sending again. */
  private readonly attempted = new Set<number>();
  /** metric key -> signatures of the points the server has (one journal = one run). */
  private history = new Map<string, Set<string>>();

  /** @param allInDoubt true when the journal comes from another process (it may have crashed mid-send). */
  constructor(private readonly allInDoubt: boolean) {}

  inDoubt(seq: number): boolean {
    return this.allInDoubt || this.attempted.has(seq);
  }

  markAttempted(seqs: number[]): void {
    for (const s of seqs) this.attempted.add(s);
  }

  /** After a failure the server may have applied part of it: forget what we knew. */
  forgetHistory(): void {
    this.history = new Map();
  }

  /** Keeps a fetched history current after a send (never fetches). */
  remember(m: Metric): void {
    this.history.get(m.key)?.add(pointSignature(m));
  }

  async knownPoints(client: MLflowClient, runId: string, key: string): Promise<Set<string>> {
    let known = this.history.get(key);
    if (known === undefined) {
      known = new Set((await client.getMetricHistory(runId, key)).map(pointSignature));
      this.history.set(key, known);
    }
    return known;
  }
}

export function pointSignature(m: Metric): string {
  return `${m.step}|${m.timestamp}|${Number.isNaN(m.value) ? 'NaN' : m.value}`;
}

export interface ReplayResult {
  sent: number;
  /** Metric points not sent again because the server already had them. */
  deduplicated: number;
  rejected: number;
  pending: number;
  /** Why replay stopped early (the server is unavailable, or the run could not be created). */
  error?: MLflowError;
}

/** Most ops merged into one log-batch request group (chunked to the server's limits anyway). */
const MAX_GROUP_OPS = 2000;

/**
 * Sends every pending op of the journal in order. Stops at the first unavailable error (the rest
 * stays pending) or when the run cannot be created; a rejected op is recorded and skipped.
 */
export async function replayJournal(journal: Journal, client: MLflowClient, session: ReplaySession): Promise<ReplayResult> {
  const result: ReplayResult = { sent: 0, deduplicated: 0, rejected: 0, pending: 0 };
  const pending = journal.pending();
  let i = 0;
  try {
    while (i < pending.length) {
      const head = pending[i]!;
      if (head.op.kind === 'create-run') {
        const run = await createRunOnce(journal, client, head, session);
        journal.ack([head.seq], { run });
        result.sent++;
        i++;
        continue;
      }
      const run = journal.run;
      if (run === undefined) {
        // The create-run op was rejected: nothing else can be sent.
        throw new MLflowError(
          `Could not replay ${journal.path}: the MLflow run was never created (${journal.rejected[0]?.error ?? 'no create-run op'})`,
          'rejected',
          'RUN_NOT_CREATED',
          undefined,
        );
      }
      if (head.op.kind === 'log-batch') {
        const group: JournalEntry[] = [];
        while (i < pending.length && pending[i]!.op.kind === 'log-batch' && group.length < MAX_GROUP_OPS) group.push(pending[i++]!);
        const counts = await sendLogBatchGroup(client, run.runId, group, session, journal);
        result.sent += counts.sent;
        result.rejected += counts.rejected;
        result.deduplicated += counts.deduplicated;
        continue;
      }
      const inDoubt = session.inDoubt(head.seq);
      session.markAttempted([head.seq]);
      try {
        journal.ack([head.seq], await sendSimpleOp(client, run, head.op, journal, inDoubt));
        result.sent++;
      } catch (error) {
        if (!(error instanceof MLflowError) || error.kind !== 'rejected') throw error;
        journal.reject([head.seq], error.message);
        result.rejected++;
      }
      i++;
    }
  } catch (error) {
    if (!(error instanceof MLflowError)) throw error;
    if (error.kind === 'unavailable') session.forgetHistory();
    result.error = error;
  }
  result.pending = journal.pending().length;
  return result;
}

async function createRunOnce(
  journal: Journal,
  client: MLflowClient,
  entry: JournalEntry,
  session: ReplaySession,
): Promise<RemoteRun> {
  const op = entry.op;
  if (op.kind !== 'create-run') throw new Error('bug: createRunOnce: not a create-run op');
  const experimentId = await client.getOrCreateExperiment(op.experimentName);
  if (session.inDoubt(entry.seq)) {
    const found = await client.searchRuns({
      experimentIds: [experimentId],
      filter: `tags.\`pipe.journal_id\` = '${journal.journalId}'`,
      maxResults: 1,
    });
    const existing = found.runs[0];
    if (existing !== undefined) {
      return { runId: existing.info.run_id, experimentId, artifactUri: existing.info.artifact_uri ?? '' };
    }
  }
  session.markAttempted([entry.seq]);
  const run = await client.createRun({ experimentId, runName: op.runName, startTime: op.startTime, tags: op.tags });
  return { runId: run.info.run_id, experimentId, artifactUri: run.info.artifact_uri ?? '' };
}

async function sendLogBatchGroup(
  client: MLflowClient,
  runId: string,
  group: JournalEntry[],
  session: ReplaySession,
  journal: Journal,
): Promise<{ sent: number; rejected: number; deduplicated: number }> {
  let deduplicated = 0;
  const metrics: Metric[] = [];
  const params: KeyValue[] = [];
  const tags: KeyValue[] = [];
  for (const e of group) {
    if (e.op.kind !== 'log-batch') continue;
    params.push(...(e.op.params ?? []));
    tags.push(...(e.op.tags ?? []));
    const modelId = e.op.modelRef !== undefined ? journal.model(e.op.modelRef)?.modelId : undefined;
    for (const raw of e.op.metrics ?? []) {
      const m = modelId !== undefined ? { ...raw, model_id: modelId } : raw;
      if (session.inDoubt(e.seq)) {
        const known = await session.knownPoints(client, runId, m.key);
        if (known.has(pointSignature(m))) {
          deduplicated++;
          continue;
        }
      }
      metrics.push(m);
    }
  }
  const seqs = group.map((e) => e.seq);
  session.markAttempted(seqs);
  try {
    await client.logBatch(runId, { metrics, params, tags });
  } catch (error) {
    if (!(error instanceof MLflowError) || error.kind !== 'rejected') throw error;
    if (group.length === 1) {
      journal.reject(seqs, error.message);
      return { sent: 0, rejected: 1, deduplicated };
    }
    // One bad op (e.g. a param whose value changed) must not sink the others: one by one.
    let sent = 0;
    let rejected = 0;
    for (const e of group) {
      const r = await sendLogBatchGroup(client, runId, [e], session, journal);
      sent += r.sent;
      rejected += r.rejected;
      deduplicated += r.deduplicated;
    }
    return { sent, rejected, deduplicated };
  }
  journal.ack(seqs);
  for (const m of metrics) session.remember(m);
  return { sent: group.length, rejected: 0, deduplicated };
}

type Created = { model?: RemoteModel; version?: { name: string; version: string } };

async function sendSimpleOp(client: MLflowClient, run: RemoteRun, op: JournalOp, journal: Journal, inDoubt: boolean): Promise<Created> {
  switch (op.kind) {
    case 'upload-artifact': {
      let content: Uint8Array | string;
      if (op.text !== undefined) content = op.text;
      else if (op.file !== undefined && existsSync(op.file)) content = await readFile(op.file);
      else {
        throw new MLflowError(
          `Could not upload artifact ${op.path}: ${op.file ?? '(no file)'} does not exist`,
          'rejected',
          'FILE_MISSING',
          undefined,
        );
      }
      const root = op.modelRef !== undefined ? modelOf(journal, op.modelRef).artifactUri : run.artifactUri;
      await client.uploadArtifact(root, op.path, content);
      return {};
    }
    case 'update-run': {
      const update: { status: RunStatus; endTime?: number } = { status: op.status };
      if (op.endTime !== undefined) update.endTime = op.endTime;
      await client.updateRun(run.runId, update);
      return {};
    }
    case 'log-inputs':
      await client.logInputs(run.runId, op.datasets);
      return {};
    case 'create-logged-model':
      return { model: await createModelOnce(client, run, op, journal, inDoubt) };
    case 'finalize-logged-model':
      await client.finalizeLoggedModel(modelOf(journal, op.ref).modelId, op.status);
      return {};
    case 'log-outputs':
      await client.logOutputs(run.runId, [{ model_id: modelOf(journal, op.ref).modelId, step: op.step }]);
      return {};
    case 'register-model':
      return { version: await registerModel(client, modelOf(journal, op.ref), run.runId, op.name, op.aliases, inDoubt) };
    case 'create-run':
    case 'log-batch':
      throw new Error(`bug: sendSimpleOp: ${op.kind} is not a simple op`);
    default: {
      const never: never = op;
      return never;
    }
  }
}

function modelOf(journal: Journal, ref: string): RemoteModel {
  const model = journal.model(ref);
  if (model === undefined) {
    throw new MLflowError(`logged model "${ref}" of ${journal.path} was never created`, 'rejected', 'MODEL_NOT_CREATED', undefined);
  }
  return model;
}

async function createModelOnce(
  client: MLflowClient,
  run: RemoteRun,
  op: Extract<JournalOp, { kind: 'create-logged-model' }>,
  journal: Journal,
  inDoubt: boolean,
): Promise<RemoteModel> {
  const refTag = `${journal.journalId}/${op.ref}`;
  if (inDoubt) {
    const found = await client.searchLoggedModels({
      experimentIds: [run.experimentId],
      filter: `tags.\`${MODEL_REF_TAG}\` = '${refTag}'`,
      maxResults: 1,
    });
    const existing = found[0];
    if (existing !== undefined) return { ref: op.ref, modelId: existing.info.model_id, artifactUri: existing.info.artifact_uri };
  }
  const tags = [...op.tags.filter((t) => t.key !== MODEL_REF_TAG), { key: MODEL_REF_TAG, value: refTag }];
  const req: Parameters<MLflowClient['createLoggedModel']>[0] = { experimentId: run.experimentId, name: op.name, sourceRunId: run.runId, tags, params: op.params };
  if (op.modelType !== undefined) req.modelType = op.modelType;
  const model = await client.createLoggedModel(req);
  return { ref: op.ref, modelId: model.info.model_id, artifactUri: model.info.artifact_uri };
}

/**
 * A new version of registered model `name` from the logged model (the registered model is created
 * when missing), then its aliases. In doubt, a version of that name from the same logged model is
 * taken instead of creating another.
 */
export async function registerModel(
  client: MLflowClient,
  model: Pick<RemoteModel, 'modelId' | 'artifactUri'>,
  runId: string | undefined,
  name: string,
  aliases: readonly string[],
  inDoubt: boolean,
): Promise<{ name: string; version: string }> {
  await client.createRegisteredModel(name);
  // MLflow 3's source for a logged model; the version answers do not carry model_id, the source does.
  const source = `models:/${model.modelId}`;
  let version: string | undefined;
  if (inDoubt) {
    const existing = await client.searchModelVersions(`name = '${name.replace(/'/g, "\\'")}'`);
    version = existing.find((v) => v.source === source)?.version;
  }
  if (version === undefined) {
    const req: Parameters<MLflowClient['createModelVersion']>[0] = { name, source, modelId: model.modelId };
    if (runId !== undefined) req.runId = runId;
    version = (await client.createModelVersion(req)).version;
  }
  for (const alias of aliases) await client.setRegisteredModelAlias(name, alias, version);
  return { name, version };
}
