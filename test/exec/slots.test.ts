import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Slots } from '../../src/exec/slots.ts';

test('CPU slots are shared by weight, in order; all = every slot', async () => {
  const slots = new Slots(2, []);
  const order: string[] = [];
  const a = await slots.acquire(1, 0);
  const b = await slots.acquire(1, 0);
  const all = slots.acquire('all', 0).then((g) => {
    order.push('all');
    return g;
  });
  const c = slots.acquire(1, 0).then((g) => {
    order.push('c');
    return g;
  });
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(order, [], 'both wait while the slots are taken');
  a.release();
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(order, [], "'all' needs both slots; c waits behind it (FIFO)");
  b.release();
  (await all).release();
  (await c).release();
  assert.equal(order, ['all', 'c']);
});

test('a grant says how many CPU slots it holds: what was asked, capped by the machine; all = every slot', async () => {
  const slots = new Slots(3, []);
  const one = await slots.acquire(1, 0);
  assert.is(one.cpus, 1);
  one.release();
  const all = await slots.acquire('all', 0);
  assert.is(all.cpus, 3);
  all.release();
  const many = await slots.acquire(8, 0);
  assert.is(many.cpus, 3);
  many.release();
});

test('GPUs are handed out by id and capped by what exists', async () => {
  const slots = new Slots(4, ['0', '1']);
  const one = await slots.acquire(1, 1);
  const two = await slots.acquire(1, 1);
  assert.equal([...one.gpus, ...two.gpus].sort(), ['0', '1']);
  let third: string[] | undefined;
  void slots.acquire(1, 1).then((g) => (third = g.gpus));
  await new Promise((r) => setTimeout(r, 10));
  assert.is(third, undefined);
  one.release();
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(third, one.gpus);
  const none = new Slots(2, []);
  assert.equal((await none.acquire(1, 1)).gpus, [], 'without GPUs a GPU request runs on the CPU');
});

test.run();
