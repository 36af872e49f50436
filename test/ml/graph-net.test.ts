import type { LayersModel, Tensor, Tensor4D } from '@tensorflow/tfjs-node';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { buildBetween, foldNetwork } from '../../src/ml/frozen.ts';
import { fastest, graphNet, graphNodes } from '../../src/ml/graph-net.ts';
import { boundaryFor, buildMobileNetV2 } from '../../src/ml/mobilenet.ts';
import { loadTf } from '../../src/ml/tf.ts';
import { randomizeBatchNorm } from '../helpers/model.ts';

const tf = loadTf('cpu');

/** A small MobileNetV2 with BatchNormalization statistics far from the identity (so folding shows). */
function smallModel(): LayersModel {
  const model = buildMobileNetV2(tf, { alpha: 0.35, inputSize: 96, seed: 3 });
  randomizeBatchNorm(model, 40);
  return model;
}

function close(actual: Tensor, expected: Tensor, what: string): void {
  assert.equal(actual.shape, expected.shape, `${what}: shape`);
  const [diff, scale] = tf.tidy(() => [tf.max(tf.abs(tf.sub(actual, expected))).dataSync()[0]!, tf.max(tf.abs(expected)).dataSync()[0]!]);
  assert.ok(diff! <= 1e-4 * Math.max(scale!, 1e-6), `${what}: max abs diff ${diff} against values up to ${scale}`);
}

test('the folded base as one TensorFlow graph in a session: the eager outputs within float noise, batch after batch', async () => {
  const model = smallModel();
  const boundary = boundaryFor(54, model.layers);
  const eager = foldNetwork(tf, model, ['out_relu', boundary.layerName]);
  const { nodes, outputs } = graphNodes(eager);
  const ops = new Set(nodes.map((n) => n.op));
  assert.equal([...ops].sort(), ['AddN', 'BiasAdd', 'Const', 'Conv2D', 'DepthwiseConv2dNative', 'Identity', 'Placeholder', 'Relu6']);
  assert.is(outputs.length, 2);

  const graph = await graphNet(tf, foldNetwork(tf, model, ['out_relu', boundary.layerName]));
  for (const [n, seed] of [[5, 1], [2, 2]] as const) {
    const x = tf.randomUniform([n, 96, 96, 3], -1, 1, 'float32', seed) as Tensor4D;
    const want = eager.apply(x);
    const got = graph.apply(x);
    assert.equal(got.map((t) => t.shape), want.map((t) => t.shape));
    close(got[0]!, want[0]!, `out_relu, batch of ${n}`);
    close(got[1]!, want[1]!, `${boundary.layerName}, batch of ${n}`);
    tf.dispose([x, ...want, ...got]);
  }
  graph.dispose();
  eager.dispose();
  model.dispose();
});

test('the frozen blocks between two boundaries as a graph (a Placeholder at the lower boundary)', async () => {
  const model = smallModel();
  const from = boundaryFor(54, model.layers);
  const to = boundaryFor(100, model.layers);
  const eager = buildBetween(tf, model, from, to);
  const graph = await graphNet(tf, buildBetween(tf, model, from, to));
  const x = tf.randomUniform([4, ...eager.inputShape], -2, 2, 'float32', 9) as Tensor4D;
  const [want] = eager.apply(x);
  const [got] = graph.apply(x);
  close(got!, want!, `${from.layerName} → ${to.layerName}`);
  tf.dispose([x, want!, got!]);
  graph.dispose();
  eager.dispose();
  model.dispose();
});

test('fastest: the graph unless PIPE_GRAPH=0, saying which', async () => {
  const model = smallModel();
  const lines: string[] = [];
  const net = await fastest(tf, foldNetwork(tf, model, ['out_relu']), (l) => lines.push(l));
  assert.match(lines[0]!, /^frozen layers: one TensorFlow graph of \d+ folded steps, in a session$/);
  net.dispose();
  process.env['PIPE_GRAPH'] = '0';
  try {
    const eager = foldNetwork(tf, model, ['out_relu']);
    assert.is(await fastest(tf, eager, (l) => lines.push(l)), eager);
    assert.is(lines[1], 'frozen layers: eager ops (PIPE_GRAPH=0)');
    eager.dispose();
  } finally {
    delete process.env['PIPE_GRAPH'];
  }
  model.dispose();
});

test.run();
