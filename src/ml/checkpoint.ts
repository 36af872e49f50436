// Training checkpoints: what a learning stage needs to go on after an epoch exactly as if it had
// never stopped — the trainable variables, the optimizer's slots and step count, and the fit loop's
// state (next epoch, history, positions of the shuffle and dropout streams). A sweep's scheduler
// may stop a trial after some epochs; a later sweep (or run) that wants it complete continues from
// here, and its result is bit-identical to a straight run.
//
// Layout: <dir>/epoch-<k>/{state.json, tensors.bin}, written in a private directory and renamed into
// place, so a reader sees a whole checkpoint or none; only the newest is kept.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Variable } from '@tensorflow/tfjs-node';
import type { Tf } from './tf.ts';
import type { FitState, KerasOptimizer, OptimizerState } from './train.ts';

interface StateFile {
  format: 'pipe-checkpoint/1';
  /** What the checkpoint belongs to, checked on reading (e.g. the stage kind). */
  owner: string;
  fit: FitState;
  optimizer: { name: OptimizerState['name']; iterations: number };
  /** Per variable: its size, and how many slots of that size follow it in tensors.bin. */
  variables: Array<{ size: number; slots: number }>;
}

/** A checkpoint as read: its fit state, and the values to put back with restoreCheckpoint. */
export interface Checkpoint {
  fit: FitState;
  optimizer: OptimizerState;
  values: Float32Array[];
}

/** Writes the state after an epoch as the newest checkpoint in `dir`, then removes the older ones. */
export async function writeCheckpoint(dir: string, owner: string, vars: readonly Variable[], optimizer: KerasOptimizer, fit: FitState): Promise<void> {
  const optimizerState = optimizer.exportState(vars);
  const values = vars.map((v) => v.dataSync() as Float32Array);
  const state: StateFile = {
    format: 'pipe-checkpoint/1',
    owner,
    fit,
    optimizer: { name: optimizerState.name, iterations: optimizerState.iterations },
    variables: values.map((v, i) => ({ size: v.length, slots: optimizerState.slots[i]?.length ?? 0 })),
  };
  const arrays = values.flatMap((v, i) => [v, ...(optimizerState.slots[i] ?? [])]);
  const name = `epoch-${fit.history.epoch.length}`;
  const tmp = path.join(dir, `.${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
  await fs.mkdir(tmp, { recursive: true });
  await fs.writeFile(path.join(tmp, 'tensors.bin'), Buffer.concat(arrays.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength))));
  await fs.writeFile(path.join(tmp, 'state.json'), JSON.stringify(state));
  const target = path.join(dir, name);
  await fs.rm(target, { recursive: true, force: true });
  await fs.rename(tmp, target);
  for (const older of await checkpointNames(dir)) if (older !== name) await fs.rm(path.join(dir, older), { recursive: true, force: true });
  // What a killed writer left (the stage holds its cache lock: no other writer is at work here).
  for (const left of await fs.readdir(dir)) if (left.startsWith('.epoch-')) await fs.rm(path.join(dir, left), { recursive: true, force: true });
}

/** The newest checkpoint in `dir` written by `owner`, if there is one (one that cannot be read counts as none). */
export async function readCheckpoint(dir: string, owner: string): Promise<Checkpoint | undefined> {
  const names = await checkpointNames(dir);
  const newest = names.sort((a, b) => epochOf(b) - epochOf(a))[0];
  if (!newest) return undefined;
  try {
    const state = JSON.parse(await fs.readFile(path.join(dir, newest, 'state.json'), 'utf8')) as StateFile;
    if (state.format !== 'pipe-checkpoint/1' || state.owner !== owner) return undefined;
    const bytes = await fs.readFile(path.join(dir, newest, 'tensors.bin'));
    const all = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    const values: Float32Array[] = [];
    const slots: Float32Array[][] = [];
    let at = 0;
    const take = (n: number) => {
      const part = all.slice(at, at + n);
      at += n;
      return part;
    };
    for (const v of state.variables) {
      values.push(take(v.size));
      slots.push(Array.from({ length: v.slots }, () => take(v.size)));
    }
    if (at !== all.length) return undefined;
    return { fit: state.fit, optimizer: { ...state.optimizer, slots }, values };
  } catch {
    return undefined;
  }
}

/** Puts a checkpoint's values back into `vars` and `optimizer` (the same variables, in the same order). */
export function restoreCheckpoint(tf: Tf, checkpoint: Checkpoint, vars: readonly Variable[], optimizer: KerasOptimizer): void {
  if (checkpoint.values.length !== vars.length) throw new Error(`bug: a checkpoint of ${checkpoint.values.length} variables for ${vars.length}`);
  vars.forEach((variable, i) => {
    const values = checkpoint.values[i]!;
    if (values.length !== variable.size) throw new Error(`bug: checkpoint variable ${i} has ${values.length} values, the model's ${variable.size}`);
    tf.tidy(() => variable.assign(tf.tensor(values, variable.shape, 'float32')));
  });
  optimizer.importState(vars, checkpoint.optimizer);
}

async function checkpointNames(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).filter((name) => /^epoch-\d+$/.test(name));
  } catch {
    return [];
  }
}

function epochOf(name: string): number {
  return Number(name.slice('epoch-'.length));
}
