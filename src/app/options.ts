// The options a command takes, as the CLI parsed them from argv (strings and flags, not yet
// checked: each command converts and checks the ones it uses, and throws UsageError for bad ones).

export interface CommandOptions {
  param?: string[];
  force?: string[];
  'fail-fast'?: boolean;
  jobs?: string;
  backend?: string;
  json?: boolean;
  verbose?: boolean;
  'no-track'?: boolean;
  /** Register the run's model (a sweep's best trial's) under this name in the Model Registry. */
  register?: string;
  alias?: string[];
  'dry-run'?: boolean;
  /** `gc`: the size budget of the cache (`50GB`). */
  'max-size'?: string;
  sweep?: string[];
  objective?: string;
  samples?: string;
  seed?: string;
  host?: string;
  stop?: boolean;
  queue?: string;
  cache?: string;
  retries?: string;
  shards?: string;
  cpus?: string;
  gpus?: string;
  name?: string;
}
