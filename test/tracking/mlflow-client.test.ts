// The REST client without MLflow: chunking, URIs, retries and errors against a scripted HTTP server.

import { createServer, type IncomingMessage, type Server } from 'node:http';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  authFromEnv,
  chunkLogBatch,
  LOG_BATCH_LIMITS,
  MLflowClient,
  MLflowError,
  proxiedArtifactPath,
  splitCredentials,
  type Metric,
} from '../../src/tracking/mlflow-client.ts';

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
}

/** An HTTP server answering from a script of [status, body] (the last one repeats). */
async function scripted(answers: Array<[number, unknown]>): Promise<{ uri: string; seen: Seen[]; server: Server }> {
  const seen: Seen[] = [];
  let i = 0;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      const [status, payload] = answers[Math.min(i++, answers.length - 1)]!;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(typeof payload === 'string' ? payload : JSON.stringify(payload));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
  return { uri: `http://127.0.0.1:${port}`, seen, server };
}

const fast = { retries: 3, baseDelayMs: 1, maxDelayMs: 2, timeoutMs: 2000 };

test('chunkLogBatch respects every log-batch limit and keeps order', () => {
  const metrics: Metric[] = Array.from({ length: 2500 }, (_, i) => ({ key: 'loss', value: i, timestamp: i, step: i }));
  const params = Array.from({ length: 250 }, (_, i) => ({ key: `p${i}`, value: 'v' }));
  const tags = Array.from({ length: 120 }, (_, i) => ({ key: `t${i}`, value: 'v' }));
  const chunks = chunkLogBatch({ metrics, params, tags });
  for (const c of chunks) {
    assert.ok(c.metrics.length <= LOG_BATCH_LIMITS.metrics);
    assert.ok(c.params.length <= LOG_BATCH_LIMITS.params);
    assert.ok(c.tags.length <= LOG_BATCH_LIMITS.tags);
    assert.ok(c.metrics.length + c.params.length + c.tags.length <= LOG_BATCH_LIMITS.total);
  }
  assert.equal(chunks.flatMap((c) => c.metrics).map((m) => m.step), metrics.map((m) => m.step));
  assert.equal(chunks.flatMap((c) => c.params).length, 250);
  assert.equal(chunks.flatMap((c) => c.tags).length, 120);
});

test('chunkLogBatch splits by size: 100 params of 6000 characters stay under 1 MB per request', () => {
  const params = Array.from({ length: 300 }, (_, i) => ({ key: `p${i}`, value: 'x'.repeat(6000) }));
  const chunks = chunkLogBatch({ params });
  for (const c of chunks) assert.ok(JSON.stringify(c).length < 1_000_000);
  assert.equal(chunks.flatMap((c) => c.params).length, 300);
});

test('proxiedArtifactPath reads mlflow-artifacts URIs and refuses others', () => {
  assert.is(proxiedArtifactPath('mlflow-artifacts:/1/abc/artifacts'), '1/abc/artifacts');
  assert.is(proxiedArtifactPath('mlflow-artifacts://host:5000/1/abc/artifacts/'), '1/abc/artifacts');
  assert.throws(() => proxiedArtifactPath('s3://bucket/1/abc/artifacts'), /not served by the tracking server/);
});

test('credentials: userinfo in the URI becomes basic auth; env variables', () => {
  const s = splitCredentials('http://ann:s%3Dcret@example.com:5000/prefix/');
  assert.is(s.uri, 'http://example.com:5000/prefix');
  assert.equal(s.auth, { kind: 'basic', username: 'ann', password: 's=cret' });
  assert.equal(authFromEnv({ MLFLOW_TRACKING_USERNAME: 'u', MLFLOW_TRACKING_PASSWORD: 'p' }), { kind: 'basic', username: 'u', password: 'p' });
  assert.equal(authFromEnv({ MLFLOW_TRACKING_TOKEN: 't' }), { kind: 'bearer', token: 't' });
  assert.is(authFromEnv({}), undefined);
});

test('retries 5xx, then succeeds; sends the bearer token', async () => {
  const s = await scripted([
    [503, 'busy'],
    [500, { error_code: 'INTERNAL_ERROR', message: 'db locked' }],
    [200, { experiment: { experiment_id: '7', name: 'e' } }],
  ]);
  try {
    const c = new MLflowClient({ uri: s.uri, auth: { kind: 'bearer', token: 'tok' }, retry: fast });
    const exp = await c.getExperimentByName('e');
    assert.is(exp?.experiment_id, '7');
    assert.is(s.seen.length, 3);
    assert.is(s.seen[0]!.headers['authorization'], 'Bearer tok');
    assert.is(s.seen[0]!.url, '/api/2.0/mlflow/experiments/get-by-name?experiment_name=e');
  } finally {
    s.server.close();
  }
});

test('a 4xx is an MLflowError at once, with error_code and a message that says what failed', async () => {
  const s = await scripted([[400, { error_code: 'INVALID_PARAMETER_VALUE', message: 'Changing param values is not allowed' }]]);
  try {
    const c = new MLflowClient({ uri: s.uri, retry: fast });
    const err = await c.logBatch('r1', { params: [{ key: 'a', value: '2' }] }).catch((e: unknown) => e);
    assert.instance(err, MLflowError);
    const e = err as MLflowError;
    assert.is(e.kind, 'rejected');
    assert.is(e.errorCode, 'INVALID_PARAMETER_VALUE');
    assert.is(e.httpStatus, 400);
    assert.is(
      e.message,
      `Could not log 1 param(s) to run r1: Changing param values is not allowed (HTTP 400 INVALID_PARAMETER_VALUE from ${s.uri})`,
    );
    assert.is(s.seen.length, 1);
  } finally {
    s.server.close();
  }
});

test('5xx until the retries run out: unavailable', async () => {
  const s = await scripted([[502, '<html>bad gateway</html>']]);
  try {
    const c = new MLflowClient({ uri: s.uri, retry: fast });
    const err = (await c.getRun('r').catch((e: unknown) => e)) as MLflowError;
    assert.is(err.kind, 'unavailable');
    assert.is(s.seen.length, 4);
  } finally {
    s.server.close();
  }
});

test('a network error: unavailable, code UNREACHABLE', async () => {
  const s = await scripted([[200, {}]]);
  const uri = s.uri;
  await new Promise((r) => s.server.close(r));
  const c = new MLflowClient({ uri, retry: { ...fast, retries: 1 } });
  const err = (await c.getRun('r').catch((e: unknown) => e)) as MLflowError;
  assert.is(err.kind, 'unavailable');
  assert.is(err.errorCode, 'UNREACHABLE');
  assert.match(err.message, /^Could not get run r: http:\/\/127\.0\.0\.1:\d+ is unreachable \(ECONNREFUSED\)$/);
});

test('getOrCreateExperiment: a lost creation race fetches the winner', async () => {
  const s = await scripted([
    [404, { error_code: 'RESOURCE_DOES_NOT_EXIST', message: 'no' }],
    [400, { error_code: 'RESOURCE_ALREADY_EXISTS', message: 'exists' }],
    [200, { experiment: { experiment_id: '12', name: 'e' } }],
  ]);
  try {
    const c = new MLflowClient({ uri: s.uri, retry: fast });
    assert.is(await c.getOrCreateExperiment('e'), '12');
    assert.equal(s.seen.map((r) => r.method), ['GET', 'POST', 'GET']);
  } finally {
    s.server.close();
  }
});

test('at most PIPE_MLFLOW_CONCURRENCY (4) requests in flight to one server from a process; the rest wait, none times out', async () => {
  let inFlight = 0;
  let most = 0;
  const server = createServer((req, res) => {
    inFlight += 1;
    most = Math.max(most, inFlight);
    req.resume();
    setTimeout(() => {
      inFlight -= 1;
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error_code: 'RESOURCE_DOES_NOT_EXIST', message: 'no such experiment' }));
    }, 40);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    // Two clients (two trials' trackers) to the same server share the limit.
    const clients = [0, 1].map(() => new MLflowClient({ uri: `http://127.0.0.1:${port}`, retry: { retries: 0, timeoutMs: 2000 } }));
    const started = Date.now();
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => clients[i % 2]!.getExperimentByName(`e${i}`)));
    assert.equal(answers, Array.from({ length: 20 }, () => undefined));
    assert.is(most, 4, 'four at a time');
    assert.ok(Date.now() - started >= 5 * 40, 'five rounds of four');
  } finally {
    server.close();
  }
});

test.run();
