import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { download, readDownloadRecord } from '../../src/util/download.ts';
import { tempDir } from '../helpers/run-kind.ts';

const body = Buffer.alloc(200_000);
for (let i = 0; i < body.length; i++) body[i] = (i * 7 + (i >> 8)) & 0xff;
const bodySha = createHash('sha256').update(body).digest('hex');

interface Seen {
  url: string;
  range?: string;
}

/** A local server; `handler` decides per request. Returns its base URL, the requests and a closer. */
async function serve(handler: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void) {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', range: req.headers.range });
    handler(req, res, seen.length);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { base, seen, close };
}

function sendAll(res: http.ServerResponse) {
  res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/zip' });
  res.end(body);
}

test('downloads once, then serves the cached file without the network', async () => {
  const server = await serve((_req, res) => sendAll(res));
  const cacheDir = tempDir();
  try {
    const progress: number[] = [];
    const file = await download({
      url: `${server.base}/data/archive.zip`,
      cacheDir,
      onProgress: (received) => progress.push(received),
    });
    assert.ok(path.isAbsolute(file));
    assert.ok(file.endsWith('-archive.zip'));
    assert.equal(readFileSync(file), body);
    assert.is(progress.at(-1), body.length);
    assert.is((await readDownloadRecord(file))?.sha256, bodySha);

    const again = await download({ url: `${server.base}/data/archive.zip`, cacheDir, sha256: undefined });
    assert.is(again, file);
    assert.is(server.seen.length, 1);
    assert.equal(
      readdirSync(cacheDir).filter((name) => name.endsWith('.part') || name.endsWith('.lock')),
      [],
    );
  } finally {
    await server.close();
  }
});

test('follows redirects and verifies a matching sha256', async () => {
  const server = await serve((req, res) => {
    if (req.url === '/old') {
      res.writeHead(302, { location: '/new/file.bin' });
      res.end();
    } else sendAll(res);
  });
  try {
    const file = await download({ url: `${server.base}/old`, cacheDir: tempDir(), sha256: bodySha.toUpperCase() });
    assert.equal(readFileSync(file), body);
    assert.equal(
      server.seen.map((s) => s.url),
      ['/old', '/new/file.bin'],
    );
  } finally {
    await server.close();
  }
});

test('a checksum mismatch is an error naming URL, expected and actual, and nothing stays cached', async () => {
  const server = await serve((_req, res) => sendAll(res));
  const cacheDir = tempDir();
  const wrong = '0'.repeat(64);
  const url = `${server.base}/archive.zip`;
  try {
    let message = '';
    try {
      await download({ url, cacheDir, sha256: wrong });
    } catch (error) {
      message = (error as Error).message;
    }
    assert.is(
      message,
      `checksum mismatch for ${url}: expected sha256 ${wrong}, got ${bodySha}; the download was discarded`,
    );
    assert.equal(readdirSync(cacheDir), []);
  } finally {
    await server.close();
  }
});

test('resumes with a Range request after the connection drops mid-body', async () => {
  const cut = 80_000;
  const server = await serve((req, res, n) => {
    if (n === 1) {
      // Promise the whole body, send part of it, then drop the connection.
      res.writeHead(200, { 'content-length': body.length, 'accept-ranges': 'bytes' });
      res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    const match = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (!match) return sendAll(res);
    const start = Number(match[1]);
    res.writeHead(206, {
      'content-length': body.length - start,
      'content-range': `bytes ${start}-${body.length - 1}/${body.length}`,
    });
    res.end(body.subarray(start));
  });
  const logs: string[] = [];
  try {
    const file = await download({
      url: `${server.base}/big.zip`,
      cacheDir: tempDir(),
      sha256: bodySha,
      retryDelayMs: 10,
      log: (line) => logs.push(line),
    });
    assert.equal(readFileSync(file), body);
    assert.is(server.seen.length, 2);
    assert.is(server.seen[0]?.range, undefined);
    assert.is(server.seen[1]?.range, `bytes=${cut}-`);
    assert.ok(logs.some((line) => line.includes(`resuming at byte ${cut}`)), logs.join('\n'));
  } finally {
    await server.close();
  }
});

test('restarts from zero when the server ignores Range', async () => {
  const server = await serve((_req, res, n) => {
    if (n === 1) {
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 50_000), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    sendAll(res);
  });
  try {
    const file = await download({ url: `${server.base}/f.zip`, cacheDir: tempDir(), retryDelayMs: 10 });
    assert.equal(readFileSync(file), body);
    assert.is(server.seen[1]?.range, 'bytes=50000-');
  } finally {
    await server.close();
  }
});

test('retries a 5xx answer, and reports a 404 without retrying', async () => {
  const server = await serve((req, res, n) => {
    if (req.url === '/missing.zip') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('no such file');
    } else if (n === 1) {
      res.writeHead(503);
      res.end();
    } else sendAll(res);
  });
  try {
    const cacheDir = tempDir();
    const file = await download({ url: `${server.base}/flaky.zip`, cacheDir, retryDelayMs: 10 });
    assert.equal(readFileSync(file), body);

    const before = server.seen.length;
    let message = '';
    try {
      await download({ url: `${server.base}/missing.zip`, cacheDir, retryDelayMs: 10 });
    } catch (error) {
      message = (error as Error).message;
    }
    assert.is(message, `download of ${server.base}/missing.zip failed: HTTP 404 Not Found`);
    assert.is(server.seen.length, before + 1);
    assert.not.ok(readdirSync(cacheDir).some((name) => name.includes('missing')));
  } finally {
    await server.close();
  }
});

test('gives up after the configured retries with the last reason', async () => {
  const server = await serve((_req, res) => {
    res.writeHead(500);
    res.end();
  });
  try {
    let message = '';
    try {
      await download({ url: `${server.base}/down.zip`, cacheDir: tempDir(), retries: 2, retryDelayMs: 5 });
    } catch (error) {
      message = (error as Error).message;
    }
    assert.is(message, `download of ${server.base}/down.zip failed after 3 attempts: HTTP 500 Internal Server Error`);
    assert.is(server.seen.length, 3);
  } finally {
    await server.close();
  }
});

test('concurrent downloads of one URL share one transfer', async () => {
  const server = await serve((_req, res) => setTimeout(() => sendAll(res), 50));
  try {
    const cacheDir = tempDir();
    const url = `${server.base}/shared.zip`;
    const [a, b] = await Promise.all([download({ url, cacheDir }), download({ url, cacheDir })]);
    assert.is(a, b);
    assert.is(server.seen.length, 1);
    assert.ok(existsSync(a));
  } finally {
    await server.close();
  }
});

test.run();
