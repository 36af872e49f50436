// Prints located diagnostics (file:line:col, the source line, an underline), sorted, with a count.

import { formatDiagnostic, sortDiagnostics, type Diagnostic } from '../core/diagnostics.ts';
import type { Io } from '../core/io.ts';

export function printDiagnostics(io: Pick<Io, 'err'>, diagnostics: Diagnostic[], texts: Record<string, string>): void {
  const sorted = sortDiagnostics(diagnostics);
  for (const d of sorted) io.err(`${formatDiagnostic(d, texts[d.file])}\n`);
  io.err(`${sorted.length} problem${sorted.length === 1 ? '' : 's'} found\n`);
}
