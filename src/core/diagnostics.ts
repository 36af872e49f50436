// Problems found in a pipeline file, as values: file, position, the field at fault, what was
// expected. Loading and analysis collect all of them and report them at once.

import type { LineCounter } from 'yaml';

export type DiagnosticCode =
  | 'yaml-syntax'
  | 'duplicate-name'
  | 'schema'
  | 'unknown-kind'
  | 'unknown-param'
  | 'bad-param-type'
  | 'missing-stage'
  | 'missing-param'
  | 'cycle'
  | 'bad-input'
  | 'bad-override'
  | 'bad-path';

export interface Diagnostic {
  code: DiagnosticCode;
  file: string;
  /** 1-based line and column of the offending node (0 when unknown, e.g. a command-line flag). */
  line: number;
  col: number;
  /** Length of the node's text, for the underline. */
  length: number;
  /** The field's path in the pipeline, e.g. `stages.train.with.learning_rate`. */
  field: string;
  message: string;
}

export interface SourceFile {
  path: string;
  text: string;
  lineCounter: LineCounter;
}

/** A diagnostic at a source range `[start, end)` given as offsets. */
export function at(
  source: SourceFile,
  range: readonly [number, number] | undefined,
  code: DiagnosticCode,
  field: string,
  message: string,
): Diagnostic {
  if (!range) return { code, file: source.path, line: 0, col: 0, length: 0, field, message };
  const { line, col } = source.lineCounter.linePos(range[0]);
  return { code, file: source.path, line, col, length: Math.max(1, range[1] - range[0]), field, message };
}

/** `file:line:col: field: message`, then the source line and an underline. */
export function formatDiagnostic(d: Diagnostic, text?: string): string {
  const where = d.line > 0 ? `${d.file}:${d.line}:${d.col}` : d.file;
  const head = oneLine(`${where}: error: ${d.field ? `${d.field}: ` : ''}${d.message}`);
  if (!text || d.line <= 0) return head;
  const sourceLine = text.split('\n')[d.line - 1] ?? '';
  const width = Math.max(1, Math.min(d.length, sourceLine.length - (d.col - 1)));
  return `${head}\n  ${sourceLine}\n  ${' '.repeat(d.col - 1)}${'~'.repeat(width)}`;
}

/** Control characters (a key or value with a newline, say) shown escaped, so a diagnostic stays one line. */
function oneLine(text: string): string {
  return text.replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
}

export function sortDiagnostics(list: Diagnostic[]): Diagnostic[] {
  return [...list].sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line || a.col - b.col);
}

/** The same problem found twice (by the schema and by analysis) is reported once. */
export function dedupeDiagnostics(list: Diagnostic[]): Diagnostic[] {
  const seen = new Set<string>();
  return list.filter((d) => {
    const key = `${d.file}:${d.line}:${d.col}:${d.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** Expected failures are values: either a result or the problems that prevented it. */
export type Result<T> = { ok: true; value: T } | { ok: false; diagnostics: Diagnostic[] };
