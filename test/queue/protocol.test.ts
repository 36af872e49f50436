import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { edgeJobId, parseQueueUrl, QueueUrlError, stageJobId } from '../../src/queue/protocol.ts';

test('--queue URLs: host, port, database, credentials, TLS', () => {
  assert.equal(
    { ...parseQueueUrl('redis://10.0.0.5:6380/2') },
    { host: '10.0.0.5', port: 6380, db: 2, maxRetriesPerRequest: null },
  );
  assert.equal(parseQueueUrl('redis://redis-host').port, 6379);
  const auth = parseQueueUrl('rediss://pipe:s%40cret@cache.example:6390');
  assert.is(auth.username, 'pipe');
  assert.is(auth.password, 's@cret');
  assert.equal(auth.tls, {});
});

test('bad --queue URLs are usage errors that say what is expected', () => {
  assert.throws(() => parseQueueUrl('localhost:6379'), (e: Error) => e instanceof QueueUrlError && /expected a redis:\/\/ URL/.test(e.message));
  assert.throws(() => parseQueueUrl('nonsense'), (e: Error) => e instanceof QueueUrlError && /expected redis:\/\/HOST:PORT/.test(e.message));
  assert.throws(() => parseQueueUrl('redis://h:1/x'), /the database must be a number/);
});

test('job ids carry the run and the fingerprint, never a colon (BullMQ forbids it)', () => {
  const fp = 'a'.repeat(64);
  const other = 'b'.repeat(64);
  assert.is(stageJobId('20261128-053632-ab12', fp), `20261128-053632-ab12.${'a'.repeat(24)}`);
  assert.is(edgeJobId('sweep-1', fp, other), `sweep-1.${'a'.repeat(16)}-${'b'.repeat(16)}`);
  assert.not.match(stageJobId('sweep-20261128-053632', fp), /:/);
});

test.run();
