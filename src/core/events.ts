// What the executor tells its subscribers (the terminal renderer, the run log, the MLflow tracker).
// Core code never prints: it emits these, and subscribers decide what a person or a server sees.

import type { MetricPoint } from './stage-kind.ts';

/** `pruned`: a sweep's scheduler stopped the stage after some of its epochs (early stopping). */
export type StageStatus = 'ran' | 'cached' | 'failed' | 'skipped' | 'pruned';

/** Where a pruned stage stopped: after `epoch` of its `of` epochs (counted from 1 within the stage). */
export interface PrunedAt {
  epoch: number;
  of: number;
}

/** A stage as the run sees it before it starts. */
export interface PlannedStageInfo {
  name: string;
  /** `command` for `run:` stages, otherwise the stage kind's name. */
  kind: string;
  fingerprint: string;
  /** True when a complete cache entry exists and the stage is not forced. */
  cached: boolean;
  /** Why it will run, in words (empty when cached). */
  reasons: string[];
  /** Resolved parameters of the stage (after `${params.*}` substitution). */
  params: Record<string, unknown>;
  needs: string[];
}

export interface RunStartEvent {
  type: 'run-start';
  runId: string;
  /** The run's directory under runs/: log, summary, the pipeline as run. */
  runDir: string;
  pipelineName: string;
  pipelineFile: string;
  experiment: string;
  /** The pipeline YAML with overrides applied, as run. */
  pipelineYaml: string;
  pipelineHash: string;
  params: Record<string, unknown>;
  backend: string;
  stages: PlannedStageInfo[];
  /** Set when this run is one trial of a sweep. */
  sweep?: { id: string; trial: string };
  startedAt: number;
}

export interface StageStartEvent {
  type: 'stage-start';
  stage: string;
  fingerprint: string;
  startedAt: number;
  /** Which `pipe worker` took it, when the run goes through a queue. */
  worker?: string;
}

export interface StageProgressEvent {
  type: 'stage-progress';
  stage: string;
  done: number;
  total?: number;
  label?: string;
}

export interface StageLogEvent {
  type: 'stage-log';
  stage: string;
  stream: 'stdout' | 'stderr' | 'log';
  line: string;
}

export interface StageMetricEvent {
  type: 'stage-metric';
  stage: string;
  point: MetricPoint;
}

export interface StageArtifact {
  /** Path relative to the stage's artifact directory, e.g. `plots/learning_curves.png`. */
  name: string;
  /** Absolute path of the file (inside the cache entry). */
  path: string;
}

export interface StageEndEvent {
  type: 'stage-end';
  stage: string;
  status: StageStatus;
  fingerprint: string;
  durationMs: number;
  /** For a failed stage: what failed; for a skipped one: which upstream stage failed. */
  error?: string;
  /** Every metric point of the stage, also for a cached stage (read back from its cache entry). */
  metrics: MetricPoint[];
  artifacts: StageArtifact[];
  summary: Record<string, string | number | boolean>;
  /** The cache entry's artifact directory (absent when failed or skipped). */
  outDir?: string;
  /** For a pruned stage: where the scheduler stopped it. */
  pruned?: PrunedAt;
  /** Skipped because an upstream stage was pruned: the trial ended early, nothing failed. */
  afterPruned?: boolean;
  /** Which `pipe worker` ran (or found) it, when the run went through a queue. */
  worker?: string;
}

export interface StageSummary {
  name: string;
  kind: string;
  status: StageStatus;
  durationMs: number;
  fingerprint: string;
  error?: string;
  reasons: string[];
  summary: Record<string, string | number | boolean>;
  /** Which `pipe worker` ran it, when the run went through a queue. */
  worker?: string;
  /** Bytes of its cache entry (ran or cached stages), and of those, bytes in files hard-linked with another entry's. */
  cacheBytes?: number;
  cacheLinkedBytes?: number;
  /** For a pruned stage: where the scheduler stopped it. */
  pruned?: PrunedAt;
  /** Skipped because an upstream stage was pruned. */
  afterPruned?: boolean;
}

export interface RunSummary {
  runId: string;
  pipeline: string;
  status: 'succeeded' | 'failed';
  /** The signal that interrupted the run (SIGINT, SIGTERM, SIGHUP): its running stages were stopped. */
  interrupted?: string;
  durationMs: number;
  stages: StageSummary[];
  /** Bytes of the run's cache entries, a file shared by several (hard links) counted once. */
  cacheBytes?: number;
  /** The last value (highest step) of every metric the stages reported, by key (e.g. `test_accuracy`). */
  metrics: Record<string, number>;
  /** A sweep trial stopped early: which stage, after which epoch. */
  pruned?: PrunedAt & { stage: string };
}

export interface RunEndEvent {
  type: 'run-end';
  summary: RunSummary;
  endedAt: number;
}

export type RunEvent =
  | RunStartEvent
  | StageStartEvent
  | StageProgressEvent
  | StageLogEvent
  | StageMetricEvent
  | StageEndEvent
  | RunEndEvent;

export type RunListener = (event: RunEvent) => void | Promise<void>;
