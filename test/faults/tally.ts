// What the fault suite did and found: faults injected (by kind), runs resumed, and the three
// counts that must stay at 0. Every problem is kept with the fault that caused it and a line of
// evidence, so that each property can be asserted per kind of fault and a failing count says where.

export type ProblemKind = 'processes leaked' | 'entries corrupted (used)' | 'records lost' | 'broken promise';

export interface Problem {
  kind: ProblemKind;
  /** The kind of fault after which it was seen (e.g. `runner SIGTERM`). */
  fault: string;
  detail: string;
}

export class Tally {
  readonly faults = new Map<string, number>();
  resumed = 0;
  readonly problems: Problem[] = [];

  fault(kind: string, n = 1): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + n);
  }

  get injected(): number {
    let n = 0;
    for (const v of this.faults.values()) n += v;
    return n;
  }

  problem(kind: ProblemKind, fault: string, detail: string): void {
    this.problems.push({ kind, fault, detail });
  }

  count(kind: ProblemKind, fault?: (name: string) => boolean): number {
    return this.problems.filter((p) => p.kind === kind && (!fault || fault(p.fault))).length;
  }

  /** Problems after faults whose name matches, as lines for an assertion message. */
  evidence(fault: (name: string) => boolean): string {
    return this.problems.filter((p) => fault(p.fault)).slice(0, 10).map((p) => `${p.kind} after ${p.fault}: ${p.detail}`).join('\n');
  }

  report(seed: number, elapsedMs: number): string {
    const kinds = [...this.faults.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    const lines = [
      `fault suite: PIPE_FAULT_SEED=${seed}, ${(elapsedMs / 1000).toFixed(1)} s`,
      `  faults injected: ${this.injected}`,
      ...kinds.map(([kind, n]) => `    ${kind.padEnd(40)} ${n}`),
      `  runs resumed: ${this.resumed}`,
      `  processes leaked: ${this.count('processes leaked')}`,
      `  entries corrupted (used): ${this.count('entries corrupted (used)')}`,
      `  records lost: ${this.count('records lost')}`,
      `  other broken promises: ${this.count('broken promise')}`,
    ];
    const byFault = new Map<string, number>();
    for (const p of this.problems) byFault.set(`${p.kind} after ${p.fault}`, (byFault.get(`${p.kind} after ${p.fault}`) ?? 0) + 1);
    for (const [what, n] of byFault) lines.push(`  ${n} × ${what}`);
    // The evidence of each, so that a failure of the counts above can be read in CI's log.
    for (const p of this.problems.slice(0, 20)) lines.push(`  - ${p.kind} after ${p.fault}: ${p.detail}`);
    return lines.join('\n');
  }
}
