// Which processes are alive, found by a marker in their command line: how tests check that nothing
// of a run is left (zombies, already dead and waiting to be reaped, do not count).

import { readdirSync, readFileSync } from 'node:fs';

export interface LiveProcess {
  pid: number;
  command: string;
}

/** Live processes whose command line or environment contains `marker` (read from /proc). */
export function processesWith(marker: string): LiveProcess[] {
  const found: LiveProcess[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const command = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').trim();
      if (!command.includes(marker) && !readFileSync(`/proc/${name}/environ`, 'utf8').includes(marker)) continue;
      // The state follows the parenthesised command name: "123 (sh) S ...".
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'Z' && state !== 'X') found.push({ pid: Number(name), command });
    } catch {
      // gone while we looked
    }
  }
  return found;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `check` holds, polling; false when `timeoutMs` passed first. */
export async function waitFor(check: () => boolean, timeoutMs: number, intervalMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return true;
    await sleep(intervalMs);
  }
  return check();
}
