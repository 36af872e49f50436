// A typed client for the MLflow tracking REST API (../shared/DESIGN.md §3): only what pipe needs.
//
// Network errors and 5xx answers are retried with exponential backoff (bounded); what still fails
// becomes an MLflowError with kind 'unavailable' (worth trying again later: the journal keeps it).
// A 4xx answer is an MLflowError with kind 'rejected' and MLflow's error_code: sending it again
// would fail the same way.

import { UnavailableError } from '../core/errors.ts';

export type MLflowAuth =
  | { kind: 'basic'; username: string; password: string }
  | { kind: 'bearer'; token: string };

/** The usual MLflow environment variables: MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN. */
export function authFromEnv(env: NodeJS.ProcessEnv = process.env): MLflowAuth | undefined {
  const username = env['MLFLOW_TRACKING_USERNAME'];
  const password = env['MLFLOW_TRACKING_PASSWORD'];
  if (username !== undefined && username !== '' && password !== undefined) {
    return { kind: 'basic', username, password };
  }
  const token = env['MLFLOW_TRACKING_TOKEN'];
  if (token !== undefined && token !== '') return { kind: 'bearer', token };
  return undefined;
}

export type MLflowErrorKind = 'rejected' | 'unavailable';

/** The MLflow server refused a request or did not answer; either way something outside pipe (exit 1). */
export class MLflowError extends UnavailableError {
  constructor(
    message: string,
    /** 'rejected': the server answered 4xx; 'unavailable': network error or 5xx after retries. */
    readonly kind: MLflowErrorKind,
    /** MLflow's error_code (e.g. RESOURCE_DOES_NOT_EXIST), or UNREACHABLE for network errors. */
    readonly errorCode: string,
    readonly httpStatus: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isUnavailable(error: unknown): error is MLflowError {
  return error instanceof MLflowError && error.kind === 'unavailable';
}

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export interface Experiment {
  experiment_id: string;
  name: string;
  artifact_location?: string;
  lifecycle_stage?: string;
  tags?: KeyValue[];
}

export interface KeyValue {
  key: string;
  value: string;
}

export interface Metric {
  key: string;
  /** NaN and ±Infinity travel as the strings "NaN", "Infinity", "-Infinity". */
  value: number;
  timestamp: number;
  step: number;
  /** MLflow 3: the LoggedModel the value measures (its model metrics page shows it). */
  model_id?: string;
  /** MLflow 3: the dataset (name and digest of a logged input) the value was measured on. */
  dataset_name?: string;
  dataset_digest?: string;
}

/** One dataset a run used (`runs/log-inputs`); schema and profile are JSON strings. */
export interface DatasetInput {
  tags: KeyValue[];
  dataset: { name: string; digest: string; source_type: string; source: string; schema?: string; profile?: string };
}

export type LoggedModelStatus = 'LOGGED_MODEL_PENDING' | 'LOGGED_MODEL_READY' | 'LOGGED_MODEL_UPLOAD_FAILED';

export interface LoggedModel {
  info: {
    model_id: string;
    experiment_id: string;
    name: string;
    artifact_uri: string;
    status: LoggedModelStatus;
    source_run_id?: string;
    model_type?: string;
    tags?: KeyValue[];
  };
  data?: { params?: KeyValue[]; metrics?: Metric[] };
}

export interface ModelVersion {
  name: string;
  version: string;
  source: string;
  run_id?: string;
  model_id?: string;
  status?: string;
  aliases?: string[];
  tags?: KeyValue[];
}

export interface RunInfo {
  run_id: string;
  run_name?: string;
  experiment_id: string;
  user_id?: string;
  status: RunStatus;
  start_time?: number;
  end_time?: number;
  artifact_uri?: string;
  lifecycle_stage?: string;
}

export interface Run {
  info: RunInfo;
  data: { metrics?: Metric[]; params?: KeyValue[]; tags?: KeyValue[] };
}

export interface FileInfo {
  path: string;
  is_dir: boolean;
  file_size?: number;
}

/** log-batch limits of the MLflow server, per request. */
export const LOG_BATCH_LIMITS = {
  metrics: 1000,
  params: 100,
  tags: 100,
  total: 1000,
  /** The server refuses bodies over 1 MB; keep a margin for the envelope. */
  bytes: 1_000_000 - 16_384,
} as const;

export interface RetryOptions {
  /** Attempts after the first one, for network errors and 5xx. */
  retries: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Per attempt. */
  timeoutMs: number;
}

export const DEFAULT_RETRY: RetryOptions = { retries: 4, baseDelayMs: 250, maxDelayMs: 4000, timeoutMs: 30_000 };

export interface MLflowClientOptions {
  /** `http(s)://host:port[/prefix]` of the tracking server. */
  uri: string;
  auth?: MLflowAuth;
  retry?: Partial<RetryOptions>;
}

export interface LogBatch {
  metrics?: Metric[];
  params?: KeyValue[];
  tags?: KeyValue[];
}

export interface SearchRunsRequest {
  experimentIds: string[];
  filter?: string;
  maxResults?: number;
  orderBy?: string[];
  pageToken?: string;
}

interface RequestOptions {
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  rawBody?: Uint8Array;
  /** Return the answer's bytes instead of parsing JSON. */
  binary?: boolean;
  /** What failed, for messages: e.g. `create run in experiment 3`. */
  what: string;
}

export class MLflowClient {
  readonly uri: string;
  private readonly auth: MLflowAuth | undefined;
  private readonly retry: RetryOptions;

  constructor(options: MLflowClientOptions) {
    const { uri, auth } = splitCredentials(options.uri);
    this.uri = uri;
    this.auth = options.auth ?? auth;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
  }

  // ---- experiments ----

  /** The experiment, or undefined when none has that name. */
  async getExperimentByName(name: string): Promise<Experiment | undefined> {
    try {
      const res = await this.request<{ experiment: Experiment }>('GET', '/api/2.0/mlflow/experiments/get-by-name', {
        query: { experiment_name: name },
        what: `get experiment "${name}"`,
      });
      return res.experiment;
    } catch (error) {
      if (error instanceof MLflowError && error.errorCode === 'RESOURCE_DOES_NOT_EXIST') return undefined;
      throw error;
    }
  }

  async createExperiment(name: string, tags: KeyValue[] = []): Promise<string> {
    const res = await this.request<{ experiment_id: string }>('POST', '/api/2.0/mlflow/experiments/create', {
      body: { name, tags },
      what: `create experiment "${name}"`,
    });
    return res.experiment_id;
  }

  /** The id of the experiment with that name, created when missing (safe when another process races us). */
  async getOrCreateExperiment(name: string): Promise<string> {
    const existing = await this.getExperimentByName(name);
    if (existing !== undefined) {
      if (existing.lifecycle_stage === 'deleted') {
        throw new MLflowError(
          `Experiment "${name}" is deleted on ${this.uri}: restore it (mlflow experiments restore) or use another name`,
          'rejected',
          'INVALID_STATE',
          undefined,
        );
      }
      return existing.experiment_id;
    }
    try {
      return await this.createExperiment(name);
    } catch (error) {
      if (error instanceof MLflowError && error.errorCode === 'RESOURCE_ALREADY_EXISTS') {
        const raced = await this.getExperimentByName(name);
        if (raced !== undefined) return raced.experiment_id;
      }
      throw error;
    }
  }

  // ---- runs ----

  async createRun(req: {
    experimentId: string;
    runName?: string;
    startTime?: number;
    tags?: KeyValue[];
    userId?: string;
  }): Promise<Run> {
    const res = await this.request<{ run: Run }>('POST', '/api/2.0/mlflow/runs/create', {
      body: {
        experiment_id: req.experimentId,
        run_name: req.runName,
        start_time: req.startTime,
        tags: req.tags ?? [],
        user_id: req.userId,
      },
      what: `create run in experiment ${req.experimentId}`,
    });
    return res.run;
  }

  async updateRun(runId: string, update: { status?: RunStatus; endTime?: number; runName?: string }): Promise<RunInfo> {
    const res = await this.request<{ run_info: RunInfo }>('POST', '/api/2.0/mlflow/runs/update', {
      body: { run_id: runId, status: update.status, end_time: update.endTime, run_name: update.runName },
      what: `update run ${runId}`,
    });
    return res.run_info;
  }

  async getRun(runId: string): Promise<Run> {
    const res = await this.request<{ run: Run }>('GET', '/api/2.0/mlflow/runs/get', {
      query: { run_id: runId },
      what: `get run ${runId}`,
    });
    return res.run;
  }

  async searchRuns(req: SearchRunsRequest): Promise<{ runs: Run[]; nextPageToken?: string }> {
    const res = await this.request<{ runs?: Run[]; next_page_token?: string }>('POST', '/api/2.0/mlflow/runs/search', {
      body: {
        experiment_ids: req.experimentIds,
        filter: req.filter,
        max_results: req.maxResults,
        order_by: req.orderBy,
        page_token: req.pageToken,
      },
      what: `search runs in experiments ${req.experimentIds.join(', ')}`,
    });
    const out: { runs: Run[]; nextPageToken?: string } = { runs: (res.runs ?? []).map(decodeRun) };
    if (res.next_page_token) out.nextPageToken = res.next_page_token;
    return out;
  }

  async setTag(runId: string, key: string, value: string): Promise<void> {
    await this.request('POST', '/api/2.0/mlflow/runs/set-tag', {
      body: { run_id: runId, key, value },
      what: `set tag ${key} on run ${runId}`,
    });
  }

  /** Logs metrics, params and tags in as many requests as the server's limits require, in order. */
  async logBatch(runId: string, batch: LogBatch): Promise<void> {
    for (const chunk of chunkLogBatch(batch)) {
      await this.request('POST', '/api/2.0/mlflow/runs/log-batch', {
        body: {
          run_id: runId,
          metrics: chunk.metrics.map(encodeMetric),
          params: chunk.params,
          tags: chunk.tags,
        },
        what: `log ${describeBatch(chunk)} to run ${runId}`,
      });
    }
  }

  /** Every point of one metric of a run, across pages. */
  async getMetricHistory(runId: string, key: string): Promise<Metric[]> {
    const out: Metric[] = [];
    let pageToken: string | undefined;
    do {
      const res = await this.request<{ metrics?: Metric[]; next_page_token?: string }>(
        'GET',
        '/api/2.0/mlflow/metrics/get-history',
        {
          query: { run_id: runId, metric_key: key, max_results: 25_000, page_token: pageToken },
          what: `get history of metric ${key} of run ${runId}`,
        },
      );
      for (const m of res.metrics ?? []) out.push(decodeMetric(m));
      pageToken = res.next_page_token || undefined;
    } while (pageToken !== undefined);
    return out;
  }

  // ---- datasets, logged models ----

  /**
   * Records datasets (and models) as inputs of the run. Logging the same dataset again is a no-op.
   *
   * Runs that log the same new dataset at the same moment (a sweep's trials) race on the server: each
   * request looks for the dataset's row (experiment, name, digest), finds none and inserts one, and
   * every insert but the first breaks the table's unique constraint; the server rolls that request
   * back and answers 400. Sent again, the request finds the row and only links the run to it. Each
   * refusal means another request has just added one of these datasets, so as many attempts as
   * there are datasets, plus one, always get through.
   */
  async logInputs(runId: string, datasets: DatasetInput[], models: Array<{ model_id: string }> = []): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.request('POST', '/api/2.0/mlflow/runs/log-inputs', {
          body: { run_id: runId, datasets, models },
          what: `log ${datasets.length} dataset input(s) to run ${runId}`,
        });
        return;
      } catch (error) {
        if (attempt >= datasets.length || !isDatasetRace(error)) throw error;
      }
    }
  }

  /** Records logged models as outputs of the run (the run page's "Logged models"). */
  async logOutputs(runId: string, models: Array<{ model_id: string; step: number }>): Promise<void> {
    await this.request('POST', '/api/2.0/mlflow/runs/outputs', {
      body: { run_id: runId, models },
      what: `log ${models.length} model output(s) of run ${runId}`,
    });
  }

  /** A new LoggedModel, PENDING until finalized; its artifacts go under its artifact_uri. */
  async createLoggedModel(req: {
    experimentId: string;
    name: string;
    sourceRunId?: string;
    modelType?: string;
    params?: KeyValue[];
    tags?: KeyValue[];
  }): Promise<LoggedModel> {
    const res = await this.request<{ model: LoggedModel }>('POST', '/api/2.0/mlflow/logged-models', {
      body: {
        experiment_id: req.experimentId,
        name: req.name,
        source_run_id: req.sourceRunId,
        model_type: req.modelType,
        params: req.params ?? [],
        tags: req.tags ?? [],
      },
      what: `create logged model "${req.name}" in experiment ${req.experimentId}`,
    });
    return res.model;
  }

  async getLoggedModel(modelId: string): Promise<LoggedModel> {
    const res = await this.request<{ model: LoggedModel }>('GET', `/api/2.0/mlflow/logged-models/${encodeURIComponent(modelId)}`, {
      what: `get logged model ${modelId}`,
    });
    return decodeLoggedModel(res.model);
  }

  async searchLoggedModels(req: { experimentIds: string[]; filter?: string; maxResults?: number }): Promise<LoggedModel[]> {
    const res = await this.request<{ models?: LoggedModel[] }>('POST', '/api/2.0/mlflow/logged-models/search', {
      body: { experiment_ids: req.experimentIds, filter: req.filter, max_results: req.maxResults },
      what: `search logged models in experiments ${req.experimentIds.join(', ')}`,
    });
    return (res.models ?? []).map(decodeLoggedModel);
  }

  async logLoggedModelParams(modelId: string, params: KeyValue[]): Promise<void> {
    for (let i = 0; i < params.length; i += LOG_BATCH_LIMITS.params) {
      await this.request('POST', `/api/2.0/mlflow/logged-models/${encodeURIComponent(modelId)}/params`, {
        body: { model_id: modelId, params: params.slice(i, i + LOG_BATCH_LIMITS.params) },
        what: `log params of logged model ${modelId}`,
      });
    }
  }

  async setLoggedModelTags(modelId: string, tags: KeyValue[]): Promise<void> {
    await this.request('PATCH', `/api/2.0/mlflow/logged-models/${encodeURIComponent(modelId)}/tags`, {
      body: { model_id: modelId, tags },
      what: `set tags of logged model ${modelId}`,
    });
  }

  async finalizeLoggedModel(modelId: string, status: LoggedModelStatus): Promise<LoggedModel> {
    const res = await this.request<{ model: LoggedModel }>('PATCH', `/api/2.0/mlflow/logged-models/${encodeURIComponent(modelId)}`, {
      body: { model_id: modelId, status },
      what: `finalize logged model ${modelId} as ${status}`,
    });
    return res.model;
  }

  // ---- the model registry ----

  /** Creates the registered model; true when it was created, false when it existed already. */
  async createRegisteredModel(name: string, description?: string): Promise<boolean> {
    try {
      await this.request('POST', '/api/2.0/mlflow/registered-models/create', {
        body: { name, description },
        what: `create registered model "${name}"`,
      });
      return true;
    } catch (error) {
      if (error instanceof MLflowError && error.errorCode === 'RESOURCE_ALREADY_EXISTS') return false;
      throw error;
    }
  }

  async createModelVersion(req: { name: string; source: string; runId?: string; modelId?: string; tags?: KeyValue[]; description?: string }): Promise<ModelVersion> {
    const res = await this.request<{ model_version: ModelVersion }>('POST', '/api/2.0/mlflow/model-versions/create', {
      body: { name: req.name, source: req.source, run_id: req.runId, model_id: req.modelId, tags: req.tags ?? [], description: req.description },
      what: `create a version of registered model "${req.name}"`,
    });
    return res.model_version;
  }

  async searchModelVersions(filter: string): Promise<ModelVersion[]> {
    const res = await this.request<{ model_versions?: ModelVersion[] }>('GET', '/api/2.0/mlflow/model-versions/search', {
      query: { filter, max_results: 1000 },
      what: `search model versions (${filter})`,
    });
    return res.model_versions ?? [];
  }

  async getModelVersion(name: string, version: string): Promise<ModelVersion> {
    const res = await this.request<{ model_version: ModelVersion }>('GET', '/api/2.0/mlflow/model-versions/get', {
      query: { name, version },
      what: `get version ${version} of registered model "${name}"`,
    });
    return res.model_version;
  }

  async setRegisteredModelAlias(name: string, alias: string, version: string): Promise<void> {
    await this.request('POST', '/api/2.0/mlflow/registered-models/alias', {
      body: { name, alias, version },
      what: `set alias @${alias} of registered model "${name}" to version ${version}`,
    });
  }

  async getModelVersionByAlias(name: string, alias: string): Promise<ModelVersion> {
    const res = await this.request<{ model_version: ModelVersion }>('GET', '/api/2.0/mlflow/registered-models/alias', {
      query: { name, alias },
      what: `get the version of registered model "${name}" with alias @${alias}`,
    });
    return res.model_version;
  }

  // ---- artifacts ----

  /**
   * Uploads bytes as `<artifactPath>` of the run, through the server's artifact proxy. `artifactUri` is
   * the run's artifact_uri (`mlflow-artifacts:/<exp>/<run>/artifacts`), from createRun/getRun.
   */
  async uploadArtifact(artifactUri: string, artifactPath: string, content: Uint8Array | string): Promise<void> {
    const root = proxiedArtifactPath(artifactUri);
    const rel = artifactPath.split('/').filter((s) => s !== '' && s !== '.');
    if (rel.length === 0 || rel.includes('..')) {
      throw new MLflowError(`Upload artifact "${artifactPath}": not a relative file path`, 'rejected', 'INVALID_PARAMETER_VALUE', undefined);
    }
    const path = [...root.split('/'), ...rel].map(encodeURIComponent).join('/');
    const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
    await this.request('PUT', `/api/2.0/mlflow-artifacts/artifacts/${path}`, {
      rawBody: bytes,
      what: `upload artifact ${artifactPath} (${bytes.byteLength} bytes) to ${artifactUri}`,
    });
  }

  /** The files directly under an `mlflow-artifacts:` URI (a run's or a logged model's artifacts). */
  async listProxiedArtifacts(artifactUri: string, path = ''): Promise<FileInfo[]> {
    const root = [proxiedArtifactPath(artifactUri), path].filter((p) => p !== '').join('/');
    const res = await this.request<{ files?: FileInfo[] }>('GET', '/api/2.0/mlflow-artifacts/artifacts', {
      query: { path: root },
      what: `list artifacts under ${artifactUri}${path ? `/${path}` : ''}`,
    });
    return (res.files ?? []).map((f) => ({ ...f, path: path ? `${path}/${f.path}` : f.path }));
  }

  /** The bytes of `<artifactUri>/<path>` through the server's artifact proxy. */
  async downloadProxiedArtifact(artifactUri: string, path: string): Promise<Uint8Array> {
    const parts = [...proxiedArtifactPath(artifactUri).split('/'), ...path.split('/')].filter((p) => p !== '');
    return this.request<Uint8Array>('GET', `/api/2.0/mlflow-artifacts/artifacts/${parts.map(encodeURIComponent).join('/')}`, {
      binary: true,
      what: `download artifact ${path} of ${artifactUri}`,
    });
  }

  /** The files and directories directly under `path` (default: the root) of the run's artifacts. */
  async listArtifacts(runId: string, path?: string): Promise<FileInfo[]> {
    const res = await this.request<{ files?: FileInfo[] }>('GET', '/api/2.0/mlflow/artifacts/list', {
      query: { run_id: runId, path },
      what: `list artifacts${path ? ` under ${path}` : ''} of run ${runId}`,
    });
    return res.files ?? [];
  }

  /** Every file (not directory) of the run's artifacts, recursively, as paths relative to the root. */
  async listArtifactsRecursive(runId: string, path?: string): Promise<FileInfo[]> {
    const out: FileInfo[] = [];
    for (const f of await this.listArtifacts(runId, path)) {
      if (f.is_dir) out.push(...(await this.listArtifactsRecursive(runId, f.path)));
      else out.push(f);
    }
    return out;
  }

  /** True when the server's /health answers 200 (one attempt, no retries). */
  async health(timeoutMs = 2000): Promise<boolean> {
    try {
      const res = await fetch(`${this.uri}/health`, { headers: this.headers(), signal: AbortSignal.timeout(timeoutMs) });
      await res.arrayBuffer();
      return res.ok;
    } catch {
      return false;
    }
  }

  // ---- transport ----

  private headers(): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.auth?.kind === 'basic') {
      h['authorization'] = `Basic ${Buffer.from(`${this.auth.username}:${this.auth.password}`).toString('base64')}`;
    } else if (this.auth?.kind === 'bearer') {
      h['authorization'] = `Bearer ${this.auth.token}`;
    }
    return h;
  }

  private async request<T = unknown>(method: 'GET' | 'POST' | 'PUT' | 'PATCH', path: string, opts: RequestOptions): Promise<T> {
    const url = new URL(this.uri + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers = this.headers();
    let body: BodyInit | undefined;
    if (opts.rawBody !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = opts.rawBody as Uint8Array<ArrayBuffer>;
    } else if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }

    let lastError: MLflowError | undefined;
    for (let attempt = 0; attempt <= this.retry.retries; attempt++) {
      if (attempt > 0) {
        const delay = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
        await sleep(delay * (0.75 + Math.random() * 0.5));
      }
      let res: Response;
      let text: string;
      let bytes: Uint8Array | undefined;
      // In line behind this process's other requests to the server (the timeout starts with the request).
      const release = await serverSlots(this.uri).acquire();
      try {
        res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(this.retry.timeoutMs) });
        if (opts.binary && res.ok) bytes = new Uint8Array(await res.arrayBuffer());
        text = bytes === undefined ? await res.text() : '';
      } catch (cause) {
        lastError = new MLflowError(
          `Could not ${opts.what}: ${this.uri} is unreachable (${describeNetworkError(cause)})`,
          'unavailable',
          'UNREACHABLE',
          undefined,
          { cause },
        );
        continue;
      } finally {
        release();
      }
      if (res.ok) return (bytes ?? (text === '' ? {} : JSON.parse(text))) as T;
      const { errorCode, message } = parseErrorBody(text, res.status);
      const err = new MLflowError(
        `Could not ${opts.what}: ${message} (HTTP ${res.status} ${errorCode} from ${this.uri})`,
        res.status >= 500 || res.status === 429 ? 'unavailable' : 'rejected',
        errorCode,
        res.status,
      );
      if (err.kind === 'rejected') throw err;
      lastError = err;
    }
    throw lastError ?? new MLflowError(`Could not ${opts.what}`, 'unavailable', 'UNREACHABLE', undefined);
  }
}

// ---- helpers (exported for tests and the journal) ----

/**
 * Requests in flight to one server from this process, at most `PIPE_MLFLOW_CONCURRENCY` (default
 * 4); the rest wait their turn. A sweep has a tracker per trial, and when many trials end at once
 * (a sweep's paused trials released together, 22 of them) their requests all at once kept the
 * embedded server (SQLite) busy past the 30 s timeout: "unreachable" warnings and retries that
 * took 90 s. In line, each request is answered in its usual milliseconds.
 */
export class RequestSlots {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(readonly limit: number) {}

  async acquire(): Promise<() => void> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next in line.
      if (next) next();
      else this.active -= 1;
    };
  }
}

const slotsByServer = new Map<string, RequestSlots>();

function serverSlots(uri: string): RequestSlots {
  let slots = slotsByServer.get(uri);
  if (!slots) {
    const limit = Number(process.env['PIPE_MLFLOW_CONCURRENCY'] ?? 4);
    slots = new RequestSlots(Number.isInteger(limit) && limit > 0 ? limit : 4);
    slotsByServer.set(uri, slots);
  }
  return slots;
}

/**
 * `http://user:pass@host/` → the URI without credentials (fetch refuses them; journals must not
 * store them) and basic auth.
 */
export function splitCredentials(uri: string): { uri: string; auth?: MLflowAuth } {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return { uri: uri.replace(/\/+$/, '') };
  }
  const out: { uri: string; auth?: MLflowAuth } = { uri: '' };
  if (url.username !== '') {
    out.auth = { kind: 'basic', username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) };
    url.username = '';
    url.password = '';
  }
  out.uri = url.toString().replace(/\/+$/, '');
  return out;
}

export interface LogBatchChunk {
  metrics: Metric[];
  params: KeyValue[];
  tags: KeyValue[];
}

/** Splits a batch so that each chunk respects LOG_BATCH_LIMITS (order within each kind is kept). */
export function chunkLogBatch(batch: LogBatch): LogBatchChunk[] {
  const chunks: LogBatchChunk[] = [];
  let cur: LogBatchChunk = { metrics: [], params: [], tags: [] };
  let bytes = 0;
  const push = <K extends keyof LogBatchChunk>(kind: K, item: LogBatchChunk[K][number], limit: number): void => {
    const size = JSON.stringify(kind === 'metrics' ? encodeMetric(item as Metric) : item).length + 1;
    const total = cur.metrics.length + cur.params.length + cur.tags.length;
    if (
      cur[kind].length >= limit ||
      total >= LOG_BATCH_LIMITS.total ||
      (total > 0 && bytes + size > LOG_BATCH_LIMITS.bytes)
    ) {
      chunks.push(cur);
      cur = { metrics: [], params: [], tags: [] };
      bytes = 0;
    }
    (cur[kind] as LogBatchChunk[K][number][]).push(item);
    bytes += size;
  };
  // Params first: MLflow validates a whole batch, and a run's params are its identity.
  for (const p of batch.params ?? []) push('params', p, LOG_BATCH_LIMITS.params);
  for (const t of batch.tags ?? []) push('tags', t, LOG_BATCH_LIMITS.tags);
  for (const m of batch.metrics ?? []) push('metrics', m, LOG_BATCH_LIMITS.metrics);
  if (cur.metrics.length + cur.params.length + cur.tags.length > 0) chunks.push(cur);
  return chunks;
}

/**
 * The path under the artifact proxy for a run's artifact_uri: `mlflow-artifacts:/1/abc/artifacts` and
 * `mlflow-artifacts://host:port/1/abc/artifacts` give `1/abc/artifacts`.
 */
export function proxiedArtifactPath(artifactUri: string): string {
  const m = /^mlflow-artifacts:(?:\/\/[^/]*)?\/*(.*?)\/*$/.exec(artifactUri);
  if (m === null || m[1] === undefined || m[1] === '') {
    throw new MLflowError(
      `Upload artifact: the run's artifact_uri ${artifactUri} is not served by the tracking server ` +
        `(expected mlflow-artifacts:/...; start the server with --serve-artifacts, the default)`,
      'rejected',
      'UNSUPPORTED_ARTIFACT_URI',
      undefined,
    );
  }
  return m[1];
}

function encodeMetric(m: Metric): Record<string, unknown> {
  const value = Number.isNaN(m.value) ? 'NaN' : m.value === Infinity ? 'Infinity' : m.value === -Infinity ? '-Infinity' : m.value;
  const out: Record<string, unknown> = { key: m.key, value, timestamp: m.timestamp, step: m.step };
  if (m.model_id !== undefined) out['model_id'] = m.model_id;
  if (m.dataset_name !== undefined) out['dataset_name'] = m.dataset_name;
  if (m.dataset_digest !== undefined) out['dataset_digest'] = m.dataset_digest;
  return out;
}

function decodeMetric(m: Metric): Metric {
  const v = m.value as unknown;
  const value = typeof v === 'string' ? Number(v) : typeof v === 'number' ? v : NaN;
  const out: Metric = { key: m.key, value, timestamp: Number(m.timestamp), step: Number(m.step ?? 0) };
  if (m.model_id) out.model_id = m.model_id;
  if (m.dataset_name) out.dataset_name = m.dataset_name;
  if (m.dataset_digest) out.dataset_digest = m.dataset_digest;
  return out;
}

function decodeLoggedModel(model: LoggedModel): LoggedModel {
  if (model.data?.metrics) model.data.metrics = model.data.metrics.map(decodeMetric);
  return model;
}

function decodeRun(run: Run): Run {
  if (run.data.metrics) run.data.metrics = run.data.metrics.map(decodeMetric);
  return run;
}

/**
 * The server's answer when a concurrent request inserted the same dataset first: the key of the
 * datasets table (experiment_id, name, digest; `dataset_pk`), as SQLite, PostgreSQL and MySQL word it.
 */
export function isDatasetRace(error: unknown): boolean {
  if (!(error instanceof MLflowError) || error.kind !== 'rejected') return false;
  return /UNIQUE constraint failed: datasets\.|violates unique constraint "dataset_pk"|Duplicate entry .* for key '(?:datasets\.)?PRIMARY'/i.test(error.message);
}

function describeBatch(c: LogBatchChunk): string {
  const parts: string[] = [];
  if (c.metrics.length) parts.push(`${c.metrics.length} metric point(s)`);
  if (c.params.length) parts.push(`${c.params.length} param(s)`);
  if (c.tags.length) parts.push(`${c.tags.length} tag(s)`);
  return parts.join(', ') || 'an empty batch';
}

function parseErrorBody(text: string, status: number): { errorCode: string; message: string } {
  try {
    const body = JSON.parse(text) as { error_code?: unknown; message?: unknown };
    if (typeof body.error_code === 'string' || typeof body.message === 'string') {
      return {
        errorCode: typeof body.error_code === 'string' ? body.error_code : `HTTP_${status}`,
        message: typeof body.message === 'string' ? body.message : text.slice(0, 500),
      };
    }
  } catch {
    // not JSON: an HTML error page or a proxy's answer
  }
  const trimmed = text.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim();
  return { errorCode: status >= 500 ? 'INTERNAL_ERROR' : `HTTP_${status}`, message: trimmed.slice(0, 300) || `HTTP ${status}` };
}

function describeNetworkError(cause: unknown): string {
  if (cause instanceof Error) {
    if (cause.name === 'TimeoutError') return 'timed out';
    const inner = (cause as { cause?: unknown }).cause;
    if (inner instanceof Error) {
      const code = (inner as { code?: unknown }).code;
      return typeof code === 'string' ? code : inner.message;
    }
    return cause.message;
  }
  return String(cause);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
