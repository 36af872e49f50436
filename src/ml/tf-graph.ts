// TensorFlow graphs written from TypeScript and run in a session through tfjs-node.
//
// tfjs-node runs every op eagerly; it reaches TensorFlow's graph runtime (Grappler's rewrites,
// fused kernels, no JavaScript between ops) only through its SavedModel support
// (TF_LoadSessionFromSavedModel). So a graph is written as a SavedModel: a GraphDef built node by
// node with `GraphBuilder`, serialised with the protobuf classes tfjs-node itself reads
// SavedModels with, and loaded into one session with a `TFSavedModel` per signature. The frozen
// base (graph-net.ts) and the fine-tuning step (graph-train.ts) are written this way.

import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Tensor } from '@tensorflow/tfjs-node';
import type { Tf } from './tf.ts';
import { UnavailableError } from '../core/errors.ts';

/* eslint-disable @typescript-eslint/no-explicit-any -- the generated protobuf classes are untyped */
export type Proto = any;

const require = createRequire(import.meta.url);

export const DT_FLOAT = 1;
export const DT_INT32 = 3;
/** The GraphDef version the nodes are written for (TensorFlow 2.x graphs; every op used is older). */
const PRODUCER = 1205;

/** The protobuf messages of tfjs-node's SavedModel reader (TensorFlow's field numbers). */
function messages(): Proto {
  return require('@tensorflow/tfjs-node/dist/proto/api_pb.js');
}

export interface NodeSpec {
  name: string;
  op: string;
  inputs: string[];
  attrs: Record<string, Proto>;
}

/** One signature: its inputs and outputs by key, each a node's first output. */
export interface SignatureSpec {
  inputs: Record<string, { node: string; dtype: number; dims: number[] }>;
  outputs: Record<string, { node: string; dtype: number; dims: number[] }>;
}

/** A GraphDef under construction: nodes in the order added, attribute values, constants. */
export class GraphBuilder {
  readonly m: Proto = messages();
  readonly nodes: NodeSpec[] = [];
  private readonly names = new Set<string>();
  private counter = 0;

  readonly attr = {
    type: (t: number) => { const a = new this.m.AttrValue(); a.setType(t); return a; },
    s: (text: string) => { const a = new this.m.AttrValue(); a.setS(new TextEncoder().encode(text)); return a; },
    b: (value: boolean) => { const a = new this.m.AttrValue(); a.setB(value); return a; },
    i: (value: number) => { const a = new this.m.AttrValue(); a.setI(value); return a; },
    f: (value: number) => { const a = new this.m.AttrValue(); a.setF(value); return a; },
    ints: (values: number[]) => { const list = new this.m.AttrValue.ListValue(); list.setIList(values); const a = new this.m.AttrValue(); a.setList(list); return a; },
    shape: (dims: number[]) => { const a = new this.m.AttrValue(); a.setShape(shapeProto(this.m, dims)); return a; },
    tensor: (t: Proto) => { const a = new this.m.AttrValue(); a.setTensor(t); return a; },
  };

  /** The float32 type attribute most ops take as T. */
  get T(): Proto {
    return this.attr.type(DT_FLOAT);
  }

  /** Adds a node; `name` defaults to a fresh one. Returns the node's name (its first output). */
  op(op: string, inputs: string[], attrs: Record<string, Proto> = {}, name?: string): string {
    const node = name ?? this.fresh(op);
    if (this.names.has(node)) throw new Error(`bug: two graph nodes named ${node}`);
    this.names.add(node);
    this.nodes.push({ name: node, op, inputs, attrs });
    return node;
  }

  /** A name no node has yet, from `prefix`. */
  fresh(prefix: string): string {
    let name: string;
    do name = `pipe/${prefix}_${this.counter++}`;
    while (this.names.has(name));
    return name;
  }

  placeholder(name: string, dtype: number, dims: number[]): string {
    return this.op('Placeholder', [], { dtype: this.attr.type(dtype), shape: this.attr.shape(dims) }, name);
  }

  constant(dtype: number, dims: number[], bytes: Uint8Array, name?: string): string {
    const t = new this.m.Tensor();
    t.setDtype(dtype);
    t.setTensorShape(shapeProto(this.m, dims));
    t.setTensorContent(bytes);
    return this.op('Const', [], { dtype: this.attr.type(dtype), value: this.attr.tensor(t) }, name);
  }

  floats(values: Float32Array, dims: number[], name?: string): string {
    return this.constant(DT_FLOAT, dims, new Uint8Array(values.buffer, values.byteOffset, values.byteLength), name);
  }

  ints(values: number[], dims: number[] = [values.length], name?: string): string {
    const data = Int32Array.from(values);
    return this.constant(DT_INT32, dims, new Uint8Array(data.buffer), name);
  }

  scalar(value: number): string {
    return this.floats(Float32Array.of(value), []);
  }

  /** saved_model.pb of this graph: one MetaGraph tagged `serve` with the given signatures. */
  savedModel(signatures: Record<string, SignatureSpec>): Uint8Array {
    const m = this.m;
    const graph = new m.GraphDef();
    for (const spec of this.nodes) {
      const node = new m.NodeDef();
      node.setName(spec.name);
      node.setOp(spec.op);
      node.setInputList(spec.inputs);
      const attrs = node.getAttrMap();
      for (const [key, value] of Object.entries(spec.attrs)) attrs.set(key, value);
      graph.addNode(node);
    }
    const versions = new m.VersionDef();
    versions.setProducer(PRODUCER);
    graph.setVersions(versions);

    const info = (spec: { node: string; dtype: number; dims: number[] }) => {
      const t = new m.TensorInfo();
      t.setName(spec.node.includes(':') ? spec.node : `${spec.node}:0`);
      t.setDtype(spec.dtype);
      t.setTensorShape(shapeProto(m, spec.dims));
      return t;
    };
    const metaInfo = new m.MetaGraphDef.MetaInfoDef();
    metaInfo.addTags('serve');
    const meta = new m.MetaGraphDef();
    meta.setMetaInfoDef(metaInfo);
    meta.setGraphDef(graph);
    for (const [key, spec] of Object.entries(signatures)) {
      const signature = new m.SignatureDef();
      for (const [name, input] of Object.entries(spec.inputs)) signature.getInputsMap().set(name, info(input));
      for (const [name, output] of Object.entries(spec.outputs)) signature.getOutputsMap().set(name, info(output));
      signature.setMethodName('tensorflow/serving/predict');
      meta.getSignatureDefMap().set(key, signature);
    }
    const model = new m.SavedModel();
    model.setSavedModelSchemaVersion(1);
    model.addMetaGraphs(meta);
    return model.serializeBinary() as Uint8Array;
  }
}

export function shapeProto(m: Proto, dims: number[]): Proto {
  const shape = new m.TensorShape();
  for (const size of dims) {
    const dim = new m.TensorShape.Dim();
    dim.setSize(size);
    shape.addDim(dim);
  }
  return shape;
}

/** A signature of a loaded graph: named tensors in, named tensors out (the caller disposes them). */
export interface GraphFunction {
  run(inputs: Record<string, Tensor>): Record<string, Tensor>;
  dispose(): void;
}

/**
 * Loads a SavedModel's signatures into one session. The SavedModel goes to a temporary directory
 * (about the size of its constants) removed once loaded. Throws an UnavailableError where the
 * backend runs no sessions, and TensorFlow's error where the graph does not load.
 */
export async function loadGraph(tf: Tf, bytes: Uint8Array, signatures: string[], tmpDir: string = os.tmpdir()): Promise<GraphFunction[]> {
  if (typeof (tf as { node?: { loadSavedModel?: unknown } }).node?.loadSavedModel !== 'function') {
    throw new UnavailableError(`the ${tf.getBackend()} backend runs no TensorFlow sessions`);
  }
  const dir = await fs.mkdtemp(path.join(tmpDir, 'pipe-graph-'));
  const loaded: Awaited<ReturnType<Tf['node']['loadSavedModel']>>[] = [];
  try {
    await fs.writeFile(path.join(dir, 'saved_model.pb'), bytes);
    // One session per path and tags: each signature's TFSavedModel shares it.
    for (const signature of signatures) loaded.push(await tf.node.loadSavedModel(dir, ['serve'], signature));
  } catch (error) {
    for (const model of loaded) model.dispose();
    throw error;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  return loaded.map((model) => ({
    run: (inputs) => model.predict(inputs) as Record<string, Tensor>,
    dispose: () => model.dispose(),
  }));
}

/** Whether graph execution is wanted: on unless PIPE_GRAPH=0. */
export function graphWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  return env['PIPE_GRAPH'] !== '0';
}

/** How far `actual` is from `expected`: the largest absolute difference, and `expected`'s largest magnitude. */
export function maxDifference(tf: Tf, actual: Tensor, expected: Tensor): { diff: number; scale: number } {
  return tf.tidy(() => ({
    diff: tf.max(tf.abs(tf.sub(actual, expected))).dataSync()[0]!,
    scale: tf.max(tf.abs(expected)).dataSync()[0]!,
  }));
}
