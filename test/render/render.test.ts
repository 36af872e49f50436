import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatDuration } from '../../src/render/render.ts';

test('durations read as a person writes them', () => {
  assert.is(formatDuration(250), '250 ms');
  assert.is(formatDuration(12_340), '12.3 s');
  assert.is(formatDuration(419_700), '7m00s');
  assert.is(formatDuration(3_599_600), '60m00s');
  assert.is(formatDuration(894_000), '14m54s');
});

test.run();
