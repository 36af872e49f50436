// A kind's params schema is the one source of its type (checked by tsc: the assertions below do not
// compile when ParamsOf derives another type) and of its defaults (filled in by the validator).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { paramsValidator, type ParamsOf, type ParamsSchema } from '../../src/core/params-schema.ts';

const schema = {
  type: 'object',
  properties: {
    epochs: { type: 'integer', minimum: 1, default: 10 },
    rate: { type: 'number' },
    optimizer: { enum: ['adam', 'sgd'], default: 'adam' },
    at: { type: ['integer', 'null'], default: null },
    size: { type: 'array', items: { type: 'integer' }, minItems: 2, maxItems: 2, default: [4, 4] },
    sets: { type: 'array', items: { type: 'string', enum: ['train', 'test'] } },
    name: { type: 'string' },
  },
  required: ['name'],
  additionalProperties: false,
} as const satisfies ParamsSchema;

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Expected = {
  epochs: number;
  optimizer: 'adam' | 'sgd';
  at: number | null;
  size: [number, number];
  name: string;
  rate?: number;
  sets?: Array<'train' | 'test'>;
};
const derived: Equal<{ [K in keyof ParamsOf<typeof schema>]: ParamsOf<typeof schema>[K] }, Expected> = true;

test('ParamsOf: defaulted and required params are present, the others optional, enums and tuples typed', () => {
  assert.ok(derived);
});

test('the validator fills in the defaults and rejects unknown names and wrong types', () => {
  const validate = paramsValidator(schema);
  const params: Record<string, unknown> = { name: 'x', rate: 0.5 };
  assert.ok(validate(params));
  assert.equal(params, { name: 'x', rate: 0.5, epochs: 10, optimizer: 'adam', at: null, size: [4, 4] });
  const again: Record<string, unknown> = { name: 'y' };
  assert.ok(validate(again));
  assert.is.not((again['size'] as number[]), params['size'], 'each object gets its own copy of a default');
  assert.not.ok(validate({ name: 'x', epoch: 3 }));
  assert.is(validate.errors?.[0]?.keyword, 'additionalProperties');
  assert.not.ok(validate({ name: 'x', epochs: 0 }));
  assert.not.ok(validate({}));
  assert.is(paramsValidator(schema), validate, 'compiled once per schema');
});

test.run();
