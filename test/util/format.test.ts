import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatBytes, parseBytes } from '../../src/util/format.ts';

test('parseBytes reads the sizes formatBytes writes, with or without B, any case, binary units', () => {
  assert.is(parseBytes('50GB'), 50 * 1024 ** 3);
  assert.is(parseBytes('1.5 GiB'), 1.5 * 1024 ** 3);
  assert.is(parseBytes('500m'), 500 * 1024 ** 2);
  assert.is(parseBytes('2T'), 2 * 1024 ** 4);
  assert.is(parseBytes('900KB'), 921_600);
  assert.is(parseBytes('1024'), 1024);
  assert.is(parseBytes('10 B'), 10);
  for (const size of [0, 1023, 409_600, 3_686_400_000]) {
    const text = formatBytes(size);
    // formatBytes keeps one decimal of the unit
    assert.ok(Math.abs(parseBytes(text)! - size) <= size * 0.02, `${size} → ${text} → ${parseBytes(text)}`);
  }
});

test('parseBytes refuses what is no size', () => {
  for (const text of ['', 'lots', '-5GB', '5 PB', 'GB', '1e9', '5GB extra']) assert.is(parseBytes(text), undefined, text);
});

test.run();
