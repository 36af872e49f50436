// Prints the stage-kind reference (markdown) from the kinds' own schemas, for README.md:
//   npx tsx scripts/kinds-doc.ts
import { kindNames, loadKind } from '../src/stages/index.ts';

const lines: string[] = [];
for (const name of kindNames) {
  const kind = await loadKind(name);
  if (!kind) continue;
  lines.push(`### \`${kind.name}\``, '', kind.description, '');
  const inputs = Object.entries(kind.inputs).map(([slot, kinds]) => `\`${slot}\` (${kinds.join(' or ')})`);
  lines.push(`Inputs: ${inputs.length ? inputs.join(', ') : 'none'}. ${kind.usesTensorflow ? 'TensorFlow stage.' : ''}`, '');
  lines.push('| param | type | default | meaning |', '| --- | --- | --- | --- |');
  const required = new Set(kind.params.required ?? []);
  for (const [param, schema] of Object.entries(kind.params.properties)) {
    const type = schema['enum'] ? (schema['enum'] as unknown[]).map((v) => JSON.stringify(v)).join(' \\| ') : [schema['type']].flat().join(' \\| ');
    const dflt = 'default' in schema ? `\`${JSON.stringify(schema['default'])}\`` : required.has(param) ? 'required' : '';
    lines.push(`| \`${param}\` | ${type} | ${dflt} | ${String(schema['description'] ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ')} |`);
  }
  lines.push('');
}
console.log(lines.join('\n'));
