// `pipe ui`: finds or starts the MLflow server and prints where to look.
import type { CommandStatus } from '../core/io.ts';

import { authFromEnv, MLflowClient } from '../tracking/mlflow-client.ts';
import { ensureEmbeddedServer, resolveTracking, stopEmbeddedServer, TrackingServerError } from '../tracking/server.ts';

export interface UiCommandOptions {
  projectDir: string;
  /** The experiment to show (default: every experiment). */
  experiment?: string;
  trackingUri?: string;
  /** Interface the embedded server binds to when it has to be started (default 127.0.0.1). */
  host?: string;
  /** Stop the embedded server instead. */
  stop?: boolean;
  env?: NodeJS.ProcessEnv;
  print?: (line: string) => void;
  printError?: (line: string) => void;
}

/** 0 with the URL printed; 1 when no server could be found or started. */
export async function uiCommand(opts: UiCommandOptions): Promise<CommandStatus> {
  const print = opts.print ?? ((l: string) => process.stdout.write(l + '\n'));
  const printError = opts.printError ?? ((l: string) => process.stderr.write(l + '\n'));
  const env = opts.env ?? process.env;

  if (opts.stop === true) {
    const stopped = await stopEmbeddedServer(opts.projectDir);
    print(stopped ? 'Stopped the embedded MLflow server.' : 'No embedded MLflow server was running.');
    return 'ok';
  }

  let uri: string;
  let embedded: boolean;
  try {
    const named = opts.trackingUri ?? env['MLFLOW_TRACKING_URI'];
    if (named === undefined || named === '') {
      const ensureOpts: Parameters<typeof ensureEmbeddedServer>[0] = { projectDir: opts.projectDir };
      if (opts.host !== undefined) ensureOpts.host = opts.host;
      const server = await ensureEmbeddedServer(ensureOpts);
      uri = server.uri;
      embedded = true;
      print(server.reused ? `MLflow server running at ${uri} (pid ${server.pid})` : `Started the MLflow server at ${uri} (pid ${server.pid}; log runs/mlflow/server.log)`);
      if (server.host !== (opts.host ?? server.host)) {
        printError(`note: the running server binds ${server.host}; stop it (pipe ui --stop) to start it on ${opts.host}`);
      }
    } else {
      const resolveOpts: Parameters<typeof resolveTracking>[0] = { projectDir: opts.projectDir, trackingUri: named, env };
      ({ uri, embedded } = await resolveTracking(resolveOpts));
    }
  } catch (error) {
    if (!(error instanceof TrackingServerError)) throw error;
    printError(`pipe ui: ${error.message}`);
    return 'failed';
  }

  if (opts.experiment === undefined) {
    print(`${uri}/#/experiments`);
    return 'ok';
  }
  const clientOpts: ConstructorParameters<typeof MLflowClient>[0] = { uri, retry: { retries: 2 } };
  const auth = embedded ? undefined : authFromEnv(env);
  if (auth !== undefined) clientOpts.auth = auth;
  try {
    const exp = await new MLflowClient(clientOpts).getExperimentByName(opts.experiment);
    if (exp === undefined) {
      print(`No experiment "${opts.experiment}" yet on ${uri}: it appears after the pipeline's first run.`);
      print(`${uri}/#/experiments`);
      return 'ok';
    }
    print(`${uri}/#/experiments/${exp.experiment_id}`);
    return 'ok';
  } catch (error) {
    printError(`pipe ui: ${(error as Error).message}`);
    return 'failed';
  }
}
