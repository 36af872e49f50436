#!/usr/bin/env node
// Runs the uvu suites (TypeScript through tsx) and ends with the plain closing line CI reads:
// "N passed, N failed". Arguments: an optional directory and file pattern, as uvu takes them.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const [dir = 'test', pattern = '\\.test\\.ts$', ...rest] = process.argv.slice(2);
const child = spawn(process.execPath, ['--import', 'tsx', 'node_modules/uvu/bin.js', dir, pattern, ...rest], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, FORCE_COLOR: '0' },
});
let output = '';
child.stdout.on('data', (chunk) => {
  output += chunk;
  process.stdout.write(chunk);
});
child.on('close', (code, signal) => {
  // uvu colours the figures even with FORCE_COLOR=0; its Total counts the tests that ran (not the skipped).
  const plain = output.replace(/\x1b\[[0-9;]*m/g, '');
  const total = Number(/Total:\s+(\d+)/.exec(plain)?.[1] ?? NaN);
  const passed = Number(/Passed:\s+(\d+)/.exec(plain)?.[1] ?? NaN);
  const skipped = Number(/Skipped:\s+(\d+)/.exec(plain)?.[1] ?? 0);
  if (Number.isFinite(total) && Number.isFinite(passed)) {
    const failed = total - passed;
    process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
    process.exitCode = failed > 0 || code !== 0 ? 1 : 0;
  } else {
    process.stdout.write(`\ntest runner ended without a summary (${signal ?? `exit ${code}`})\n`);
    process.exitCode = code || 1;
  }
});
