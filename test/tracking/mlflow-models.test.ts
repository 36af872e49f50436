// The REST round trips pipe makes for datasets, logged models and the Model Registry, each against a
// real MLflow server from the venv (one for the file): what is sent is what the server gives back.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { registerModel } from '../../src/tracking/journal.ts';
import { MLflowError, type DatasetInput } from '../../src/tracking/mlflow-client.ts';
import { startTestMlflow, type TestMlflow } from '../helpers/mlflow.ts';

let mlflow: TestMlflow;
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

test.before(async () => {
  mlflow = await startTestMlflow();
});

test.after(async () => {
  await mlflow?.dispose();
});

const trainSet: DatasetInput = {
  tags: [{ key: 'mlflow.data.context', value: 'training' }],
  dataset: {
    name: 'cats_and_dogs_filtered/train',
    digest: '0123456789abcdef',
    source_type: 'http',
    source: JSON.stringify({ url: 'https://example.org/cats_and_dogs_filtered.zip' }),
    schema: JSON.stringify({ mlflow_tensorspec: { features: '[]', targets: '[]' } }),
    profile: JSON.stringify({ num_rows: 1400, classes: { cats: 700, dogs: 700 } }),
  },
};

test('runs/log-inputs: the run lists its datasets with their context; logging one again adds nothing', async () => {
  const c = mlflow.client;
  const exp = await c.getOrCreateExperiment('datasets');
  const run = await c.createRun({ experimentId: exp, startTime: T0 });
  await c.logInputs(run.info.run_id, [trainSet]);
  await c.logInputs(run.info.run_id, [trainSet]);
  const got = (await c.getRun(run.info.run_id)) as unknown as { inputs?: { dataset_inputs?: DatasetInput[] } };
  const inputs = got.inputs?.dataset_inputs ?? [];
  assert.is(inputs.length, 1);
  assert.equal(inputs[0]!.dataset.name, 'cats_and_dogs_filtered/train');
  assert.equal(inputs[0]!.dataset.digest, '0123456789abcdef');
  assert.equal(JSON.parse(inputs[0]!.dataset.profile!), { num_rows: 1400, classes: { cats: 700, dogs: 700 } });
  assert.equal(inputs[0]!.tags, [{ key: 'mlflow.data.context', value: 'training' }]);
});

test('runs/log-inputs: the same new dataset logged to several runs at once reaches every run', async () => {
  // A sweep's trials log the data they share at the same moment: each request finds no dataset row
  // and inserts one, and all but the first break the (experiment, name, digest) unique constraint.
  const c = mlflow.client;
  const exp = await c.getOrCreateExperiment('datasets-concurrent');
  const splits = ['train', 'validation', 'test'].map((set, i) => ({
    tags: [{ key: 'mlflow.data.context', value: set }],
    dataset: { ...trainSet.dataset, name: `shared/${set}`, digest: `feedface0000000${i}` },
  }));
  for (let round = 0; round < 3; round++) {
    const runs = await Promise.all(Array.from({ length: 8 }, () => c.createRun({ experimentId: exp, startTime: T0 })));
    const sets = splits.map((s) => ({ ...s, dataset: { ...s.dataset, digest: `${s.dataset.digest.slice(0, 15)}${round}` } }));
    await Promise.all(runs.map((r) => c.logInputs(r.info.run_id, sets)));
    for (const r of runs) {
      const got = (await c.getRun(r.info.run_id)) as unknown as { inputs?: { dataset_inputs?: DatasetInput[] } };
      const names = (got.inputs?.dataset_inputs ?? []).map((d) => d.dataset.name).sort();
      assert.equal(names, ['shared/test', 'shared/train', 'shared/validation']);
    }
  }
});

test('logged-models: create with params and tags, artifacts, metrics by model_id, finalize, run outputs', async () => {
  const c = mlflow.client;
  const exp = await c.getOrCreateExperiment('models');
  const run = await c.createRun({ experimentId: exp, startTime: T0 });
  const runId = run.info.run_id;
  const model = await c.createLoggedModel({
    experimentId: exp,
    name: 'small',
    sourceRunId: runId,
    modelType: 'tfjs-layers',
    params: [{ key: 'fine_tune_at', value: '100' }],
    tags: [{ key: 'pipe.model_ref', value: 'j/evaluate' }],
  });
  const id = model.info.model_id;
  assert.is(model.info.status, 'LOGGED_MODEL_PENDING');
  assert.match(model.info.artifact_uri, /^mlflow-artifacts:\//);

  await c.uploadArtifact(model.info.artifact_uri, 'model.json', '{"format":"layers-model"}');
  await c.uploadArtifact(model.info.artifact_uri, 'weights.bin', new Uint8Array([1, 2, 3]));
  const files = (await c.listProxiedArtifacts(model.info.artifact_uri)).map((f) => f.path).sort();
  assert.equal(files, ['model.json', 'weights.bin']);
  assert.equal([...(await c.downloadProxiedArtifact(model.info.artifact_uri, 'weights.bin'))], [1, 2, 3]);

  await c.logBatch(runId, { metrics: [{ key: 'test_accuracy', value: 0.97, timestamp: T0, step: 0, model_id: id }] });
  await c.logLoggedModelParams(id, [{ key: 'head.epochs', value: '2' }]);
  await c.setLoggedModelTags(id, [{ key: 'classes', value: 'cats, dogs' }]);
  assert.is((await c.finalizeLoggedModel(id, 'LOGGED_MODEL_READY')).info.status, 'LOGGED_MODEL_READY');
  await c.logOutputs(runId, [{ model_id: id, step: 0 }]);

  const got = await c.getLoggedModel(id);
  assert.is(got.info.status, 'LOGGED_MODEL_READY');
  assert.is(got.info.source_run_id, runId);
  const params = Object.fromEntries((got.data?.params ?? []).map((p) => [p.key, p.value]));
  assert.equal(params, { fine_tune_at: '100', 'head.epochs': '2' });
  const tags = Object.fromEntries((got.info.tags ?? []).map((t) => [t.key, t.value]));
  assert.is(tags['classes'], 'cats, dogs');
  assert.equal((got.data?.metrics ?? []).map((m) => [m.key, m.value, m.model_id]), [['test_accuracy', 0.97, id]]);

  const found = await c.searchLoggedModels({ experimentIds: [exp], filter: "tags.`pipe.model_ref` = 'j/evaluate'" });
  assert.equal(found.map((m) => m.info.model_id), [id]);
  const outputs = ((await c.getRun(runId)) as unknown as { outputs?: { model_outputs?: Array<{ model_id: string }> } }).outputs;
  assert.equal(outputs?.model_outputs?.map((o) => o.model_id), [id]);
});

test('the registry: a version of a logged model, found by name and version and by alias; in doubt, no second version', async () => {
  const c = mlflow.client;
  const exp = await c.getOrCreateExperiment('registry');
  const run = await c.createRun({ experimentId: exp, startTime: T0 });
  const model = await c.createLoggedModel({ experimentId: exp, name: 'small', sourceRunId: run.info.run_id });
  await c.finalizeLoggedModel(model.info.model_id, 'LOGGED_MODEL_READY');
  const remote = { modelId: model.info.model_id, artifactUri: model.info.artifact_uri };

  assert.equal(await registerModel(c, remote, run.info.run_id, 'cats-vs-dogs', ['champion'], false), { name: 'cats-vs-dogs', version: '1' });
  assert.equal(await registerModel(c, remote, run.info.run_id, 'cats-vs-dogs', ['champion'], true), { name: 'cats-vs-dogs', version: '1' });
  const other = await c.createLoggedModel({ experimentId: exp, name: 'small' });
  assert.equal(await registerModel(c, { modelId: other.info.model_id, artifactUri: other.info.artifact_uri }, undefined, 'cats-vs-dogs', ['challenger'], false), { name: 'cats-vs-dogs', version: '2' });

  const v1 = await c.getModelVersion('cats-vs-dogs', '1');
  assert.is(v1.run_id, run.info.run_id);
  assert.is(v1.source, `models:/${model.info.model_id}`);
  assert.equal(v1.aliases, ['champion']);
  assert.is((await c.getModelVersionByAlias('cats-vs-dogs', 'champion')).version, '1');
  assert.is((await c.getModelVersionByAlias('cats-vs-dogs', 'challenger')).version, '2');
  const missing = await c.getModelVersionByAlias('cats-vs-dogs', 'nobody').catch((e: unknown) => e);
  assert.instance(missing, MLflowError);
  assert.is((missing as MLflowError).kind, 'rejected');
});

test.run();
