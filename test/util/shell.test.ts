// Every value quoted by shellQuote reaches a real /bin/sh command as one unchanged argument.
import { execFileSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { shellQuote } from '../../src/util/shell.ts';

/** The arguments /bin/sh passes to a command, one per line (NUL-free values only). */
function wordsOf(command: string): string[] {
  const out = execFileSync('/bin/sh', ['-c', `for w in ${command}; do printf '%s\\0' "$w"; done`], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

test('plain values are left as they are', () => {
  for (const value of ['0.35', 'abc', './data/x.csv', '-1', 'a=b', 'x@y:1,2%']) assert.is(shellQuote(value), value);
});

test('anything else arrives as exactly one word', () => {
  const values = ["it's", '; touch pwned', '$(touch pwned)', '`id`', 'a b', '', "'", "''", '"', '\\', 'new\nline', '*', '~', '$HOME', 'é ü', '#x', '&&', "a'b'c"];
  for (const value of values) assert.equal(wordsOf(shellQuote(value)), [value], JSON.stringify(value));
});

test('quoting is POSIX single quotes', () => {
  assert.is(shellQuote("it's"), `'it'\\''s'`);
  assert.is(shellQuote(''), `''`);
});

test.run();
