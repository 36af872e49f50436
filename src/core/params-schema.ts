// A stage kind's parameters have one source: their JSON schema, written `as const`. ajv validates
// a stage's `with:` against it and fills in the defaults (useDefaults); the TypeScript type the
// kind's code sees is derived from the same literal by `ParamsOf`, so a default, a type or an enum
// is written once. Only the subset of JSON schema the kinds use is mapped: type (one name or a
// list), enum, items, default and required; other keywords (minimum, pattern, …) only constrain
// values and leave the type as it is.

import { Ajv, type ValidateFunction } from 'ajv';

type JsonTypeName = 'string' | 'number' | 'integer' | 'boolean' | 'null' | 'array' | 'object';

/** The schema of one parameter. */
export interface ParamSchema {
  readonly type?: JsonTypeName | readonly JsonTypeName[];
  readonly enum?: readonly unknown[];
  readonly items?: ParamSchema;
  readonly default?: unknown;
  readonly description?: string;
  readonly [keyword: string]: unknown;
}

/** JSON schema of a kind's parameters: an object of named parameters. */
export interface ParamsSchema {
  readonly type: 'object';
  readonly properties: { readonly [name: string]: ParamSchema };
  readonly required?: readonly string[];
  readonly additionalProperties?: false;
}

type TypeOfName<Name, S> = Name extends 'string'
  ? string
  : Name extends 'number' | 'integer'
    ? number
    : Name extends 'boolean'
      ? boolean
      : Name extends 'null'
        ? null
        : Name extends 'array'
          ? ArrayOf<S extends { items: infer Items } ? ValueOf<Items> : unknown, S>
          : Name extends 'object'
            ? Record<string, unknown>
            : never;

/** An array with `minItems` = `maxItems` = N is a tuple of N (e.g. an image size [height, width]). */
type ArrayOf<Item, S> = S extends { minItems: infer N extends number; maxItems: infer M extends number }
  ? [N] extends [M]
    ? TupleOf<Item, N>
    : Item[]
  : Item[];

type TupleOf<Item, N extends number, Acc extends Item[] = []> = number extends N
  ? Item[]
  : Acc['length'] extends N
    ? Acc
    : TupleOf<Item, N, [...Acc, Item]>;

/** The TypeScript type of the values a parameter schema accepts. */
export type ValueOf<S> = S extends { enum: readonly (infer Member)[] }
  ? Member
  : S extends { type: readonly (infer Name)[] }
    ? TypeOfName<Name, S>
    : S extends { type: infer Name }
      ? TypeOfName<Name, S>
      : unknown;

/** Names of the parameters that are always present after validation: required or defaulted. */
type PresentNames<S extends ParamsSchema> =
  | (S['required'] extends readonly (infer Name)[] ? Name : never)
  | { [K in keyof S['properties']]: S['properties'][K] extends { default: unknown } ? K : never }[keyof S['properties']];

type Flatten<T> = { [K in keyof T]: T[K] };

/** A kind's parameters as its code receives them: validated, with ajv's defaults filled in. */
export type ParamsOf<S extends ParamsSchema> = Flatten<
  { -readonly [K in keyof S['properties'] & PresentNames<S>]: ValueOf<S['properties'][K]> } & {
    -readonly [K in Exclude<keyof S['properties'], PresentNames<S>>]?: ValueOf<S['properties'][K]>;
  }
>;

const ajv = new Ajv({ allErrors: true, strict: false, useDefaults: true, verbose: true });
const validators = new WeakMap<ParamsSchema, ValidateFunction>();

/**
 * The validator of a kind's parameters. It fills in the schema's defaults in the object it checks
 * (ajv's useDefaults), which is how a kind's code gets `ParamsOf<schema>`; unknown names are errors.
 */
export function paramsValidator(schema: ParamsSchema): ValidateFunction {
  let validate = validators.get(schema);
  if (!validate) {
    validate = ajv.compile({ ...schema, additionalProperties: false });
    validators.set(schema, validate);
  }
  return validate;
}
