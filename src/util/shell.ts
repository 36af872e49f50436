// Quoting for /bin/sh: a value substituted into a shell command must reach the command as exactly
// one word, whatever it contains (spaces, quotes, `;`, `$(...)`, newlines).

/** Characters that never need quoting (as Python's shlex.quote), so plain values read unchanged. */
const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** `value` as one POSIX shell word: unchanged when it is plain, else single-quoted (`'` as `'\''`). */
export function shellQuote(value: string): string {
  if (SAFE_WORD.test(value)) return value;
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
