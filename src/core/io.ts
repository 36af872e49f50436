// Where a command's words go: its result on `out`, progress and problems on `err`. The CLI makes
// one for the terminal; tests make one that collects the text.

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Whether `err` is an interactive terminal (live progress instead of plain lines). */
  isTTY: boolean;
}

/** How a command ended, which the CLI turns into an exit code. */
export type CommandStatus = 'ok' | 'failed' | 'invalid';
