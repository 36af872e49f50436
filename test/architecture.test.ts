// The layering of src/ (see .dependency-cruiser.cjs and README.md's "Layout"): no import circle,
// nothing imports src/cli/, each layer imports only the layers below it.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const root = fileURLToPath(new URL('..', import.meta.url));
const depcruise = fileURLToPath(new URL('../node_modules/dependency-cruiser/bin/dependency-cruise.mjs', import.meta.url));

function cruise(...args: string[]): { violations: Array<{ rule: { name: string }; from: string; to: string }>; modules: number } {
  const out = execFileSync(process.execPath, [depcruise, ...args, '--config', '.dependency-cruiser.cjs', '--output-type', 'json'], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  const result = JSON.parse(out) as { summary: { violations: Array<{ rule: { name: string }; from: string; to: string }>; totalCruised: number } };
  return { violations: result.summary.violations, modules: result.summary.totalCruised };
}

test('src/ keeps its layers: no circle, nothing imports cli/, imports point down', () => {
  const { violations, modules } = cruise('src');
  assert.ok(modules > 60, `cruised only ${modules} modules: is the config's path filter right?`);
  assert.equal(violations.map((v) => `${v.rule.name}: ${v.from} → ${v.to}`), []);
});

test.run();
