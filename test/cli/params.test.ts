// Param values on the command line: a value substituted into a shell command is one word, never
// shell syntax; a list-form command gets it as one argument without a shell.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

const shellPipeline = `name: inject
params:
  x: hello
stages:
  echo:
    run: "echo \${params.x} > out.txt"
    outs: [out.txt]
  argv:
    run: [sh, -c, 'printf "%s" "$0" > argv.txt', "\${params.x}"]
    outs: [argv.txt]
`;

for (const value of ['; touch pwned', '$(touch pwned)', "it's", 'a  b|`touch pwned`', '']) {
  test(`-p x=${JSON.stringify(value)} reaches the command as one word`, async () => {
    const dir = project({ 'p.yaml': shellPipeline });
    const r = await pipe(dir, ['run', 'p.yaml', '-p', `x=${value}`]);
    assert.is(r.exitCode, 0, r.stderr);
    assert.not.ok(existsSync(path.join(dir, 'pwned')), 'the injected command ran');
    assert.is(readFileSync(path.join(dir, 'out.txt'), 'utf8'), `${value}\n`);
    assert.is(readFileSync(path.join(dir, 'argv.txt'), 'utf8'), value);
  });
}

const flagship = fileURLToPath(new URL('../../pipelines/mobilenet.yaml', import.meta.url));

test('a param whose default is written 1.0 takes -p alpha=0.35 (the flagship pipeline)', async () => {
  const r = await pipe(project(), ['status', flagship, '-p', 'alpha=0.35', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  assert.is((JSON.parse(r.stdout) as { stages: unknown[] }).stages.length, 8);
});

test.run();
