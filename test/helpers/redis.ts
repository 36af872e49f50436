// A real Redis server for tests: Debian's redis-server that `npm run setup` unpacked into .redis/,
// on a free loopback port, persisting nothing; or the one .ci/run started (PIPE_TEST_REDIS_URL).
//
//   const redis = await startTestRedis();
//   ... redis.url ...
//   await redis.stop();

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { freePort } from '../../src/tracking/server.ts';

const repoDir = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
export const redisServerBin = process.env['PIPE_REDIS_SERVER'] ?? resolve(repoDir, '.redis', 'bin', 'redis-server');

export interface TestRedis {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** The server of PIPE_TEST_REDIS_URL (.ci/run starts one), else a new one for this test file. */
export async function startTestRedis(): Promise<TestRedis> {
  const given = process.env['PIPE_TEST_REDIS_URL'];
  if (given) {
    const url = new URL(given);
    return { url: given, port: Number(url.port || 6379), stop: async () => undefined };
  }
  return startPrivateRedis();
}

export interface PrivateRedis extends TestRedis {
  /** Kills the server without warning (SIGKILL); what it held is gone (it persists nothing). */
  kill(): Promise<void>;
  /** Starts it again on the same port (after kill or stop). */
  start(): Promise<void>;
}

/** Always a server of its own, never the shared one: for tests that kill it. */
export async function startPrivateRedis(): Promise<PrivateRedis> {
  if (!existsSync(redisServerBin)) throw new Error(`${redisServerBin} is missing: run \`npm run setup\` (it unpacks Debian's redis-server into .redis/)`);
  const port = await freePort();
  let child = await spawnRedis(port);
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill(signal);
    await exited;
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL'),
    async start() {
      if (child.exitCode === null && child.signalCode === null) return;
      child = await spawnRedis(port);
    },
  };
}

async function spawnRedis(port: number): Promise<ChildProcess> {
  const child: ChildProcess = spawn(redisServerBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${output}`);
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') {
        client.disconnect();
        return child;
      }
    } catch {
      client.disconnect();
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer on port ${port}: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
