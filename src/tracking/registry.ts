// Finding a model on the server: `models:/NAME/VERSION`, `models:/NAME@ALIAS` (the Model Registry)
// or `models:/m-…` (a LoggedModel id), and fetching its artifacts through the server's artifact proxy.

import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { InputError, UnavailableError } from '../core/errors.ts';
import { authFromEnv, MLflowClient, MLflowError, type LoggedModel } from './mlflow-client.ts';
import { resolveTracking } from './server.ts';

export type ModelUri =
  | { kind: 'version'; name: string; version: string }
  | { kind: 'alias'; name: string; alias: string }
  | { kind: 'logged-model'; modelId: string };

export function isModelUri(text: string): boolean {
  return text.startsWith('models:/');
}

/** Parses `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/m-<id>`. */
export function parseModelUri(uri: string): ModelUri {
  const rest = uri.slice('models:/'.length);
  const alias = /^([^/@]+)@([A-Za-z0-9_-]+)$/.exec(rest);
  if (alias) return { kind: 'alias', name: alias[1]!, alias: alias[2]! };
  const version = /^([^/@]+)\/(\d+)$/.exec(rest);
  if (version) return { kind: 'version', name: version[1]!, version: version[2]! };
  if (/^m-[0-9a-f]+$/.test(rest)) return { kind: 'logged-model', modelId: rest };
  throw new InputError(`${uri}: expected models:/NAME/VERSION, models:/NAME@ALIAS or models:/<logged model id m-…>`);
}

/** A client for the project's tracking server (MLFLOW_TRACKING_URI, else the embedded one). */
export async function projectClient(projectDir: string, env: NodeJS.ProcessEnv = process.env): Promise<MLflowClient> {
  const target = await resolveTracking({ projectDir, env });
  const options: ConstructorParameters<typeof MLflowClient>[0] = { uri: target.uri };
  const auth = target.embedded ? undefined : authFromEnv(env);
  if (auth !== undefined) options.auth = auth;
  return new MLflowClient(options);
}

/** The LoggedModel a `models:/` URI names (a registry version's source is `models:/<model id>`). */
export async function resolveModelUri(client: MLflowClient, uri: string): Promise<LoggedModel> {
  const parsed = parseModelUri(uri);
  try {
    let modelId: string;
    if (parsed.kind === 'logged-model') modelId = parsed.modelId;
    else {
      const version =
        parsed.kind === 'version'
          ? await client.getModelVersion(parsed.name, parsed.version)
          : await client.getModelVersionByAlias(parsed.name, parsed.alias);
      const source = /^models:\/(m-[0-9a-f]+)$/.exec(version.source);
      if (!source) throw new InputError(`${uri}: version ${version.version} of "${version.name}" comes from ${version.source}, not from a logged model pipe can load`);
      modelId = source[1]!;
    }
    return await client.getLoggedModel(modelId);
  } catch (error) {
    if (error instanceof MLflowError && error.kind === 'rejected') {
      throw new InputError(`${uri}: not found on ${client.uri} (${error.errorCode})`, { cause: error });
    }
    if (error instanceof MLflowError) throw new UnavailableError(error.message, { cause: error });
    throw error;
  }
}

/** Copies every artifact file of the model into `dir` (through the server). Returns their paths. */
export async function downloadModel(client: MLflowClient, model: LoggedModel, dir: string): Promise<string[]> {
  const files: string[] = [];
  const walk = async (path: string): Promise<void> => {
    for (const f of await client.listProxiedArtifacts(model.info.artifact_uri, path)) {
      if (f.is_dir) {
        await walk(f.path);
        continue;
      }
      const local = join(dir, normalize(f.path));
      if (!local.startsWith(dir)) continue; // a path that climbs out: not ours to write
      await mkdir(dirname(local), { recursive: true });
      await writeFile(local, await client.downloadProxiedArtifact(model.info.artifact_uri, f.path));
      files.push(local);
    }
  };
  await walk('');
  return files;
}
