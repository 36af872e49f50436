// A stage's expected failure (a PipeError) shows on the terminal as its one-line reason and hint;
// its stack goes to the run's log.txt only.
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

let server: Server;
let url = '';

test.before(async () => {
  server = createServer((_req, res) => {
    res.statusCode = 404;
    res.end('no such file');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/cats.zip`;
});

test.after(() => new Promise<void>((resolve) => server.close(() => resolve())));

test('a data URL that cannot be fetched: the reason and the -p data=DIR hint, no stack trace', async () => {
  const dir = project({ 'p.yaml': `name: f\nparams:\n  data: ${url}\nstages:\n  fetch:\n    kind: fetch\n    with: {source: "\${params.data}"}\n` });
  const r = await pipe(dir, ['run', 'p.yaml']);
  assert.is(r.exitCode, 1);
  const reason = `download of ${url} failed: HTTP 404 Not Found`;
  assert.match(r.stderr, new RegExp(`^\\S+ fetch: hint: for local data, give a directory of class folders or a zip instead of the URL, e\\.g\\. -p data=DIR$`, 'm'));
  assert.ok(r.stderr.includes(`fetch: failed (`) && r.stderr.includes(`): ${reason}\n`), r.stderr);
  assert.not.match(r.stderr, /^\s+at /m, 'a stack trace on the terminal');
  const log = readFileSync(path.join(dir, 'runs', 'f', 'latest', 'log.txt'), 'utf8');
  assert.match(log, /\[fetch\] stderr: UnavailableError: download of .* failed: HTTP 404 Not Found/);
  assert.match(log, /\[fetch\] stderr:\s+at /);
});

test.run();
