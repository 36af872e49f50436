// Sampled search spaces for sweeps: `choice`, `uniform`, `loguniform` and `int` distributions,
// drawn with a scrambled Halton sequence (quasi-random: N points cover the space more evenly than N
// random ones, which matters for the 10–30 trials a sweep can afford). Sample i depends only on the
// seed, i and the space, so `samples: 2N` with the same seed starts with the same N trials as
// `samples: N`, and those come from the cache. Pure: no I/O.

export type Distribution =
  | { kind: 'choice'; values: unknown[] }
  | { kind: 'uniform'; low: number; high: number }
  | { kind: 'loguniform'; low: number; high: number }
  | { kind: 'int'; low: number; high: number };

export type DistributionKind = Distribution['kind'];

export const distributionKinds: readonly DistributionKind[] = ['choice', 'uniform', 'loguniform', 'int'];

/** A problem with one distribution, said so that it reads after `sweep.space.NAME: `. */
export type SpaceProblem = string;

/**
 * Reads one distribution from its pipeline form, `{loguniform: [1e-6, 1e-4]}`, or says what is
 * wrong with it. (The schema has checked the shape; this checks the values.)
 */
export function readDistribution(raw: unknown): Distribution | SpaceProblem {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return `expected one of ${forms()}`;
  const entries = Object.entries(raw);
  const [entry] = entries;
  if (entries.length !== 1 || !entry) return `expected exactly one of ${forms()}`;
  const [kind, args] = entry;
  if (!isKind(kind)) return `unknown distribution '${kind}' (expected ${distributionKinds.join(', ')})`;
  if (!Array.isArray(args)) return `${kind}: expected a list, e.g. ${example(kind)}`;
  return makeDistribution(kind, args);
}

/**
 * Reads the command-line form of `-S NAME=FORM`: `loguniform(1e-6,1e-4)`, `uniform(0,1)`,
 * `int(1,5)`, `choice(60,100,130)`. Returns undefined when `text` is not a distribution (then it is
 * a plain list of values, `V1,V2,…`). Choice values are returned as text, to be typed by the param.
 */
export function parseDistributionArg(text: string): { kind: DistributionKind; args: string[] } | SpaceProblem | undefined {
  const match = /^\s*([a-z]+)\s*\((.*)\)\s*$/s.exec(text);
  if (!match) return undefined;
  const [, kind = '', inner = ''] = match;
  if (!isKind(kind)) return `unknown distribution '${kind}(…)' (expected ${distributionKinds.map((k) => `${k}(…)`).join(', ')})`;
  const args = inner.split(',').map((a) => a.trim());
  if (args.length === 1 && args[0] === '') return `${kind}(): expected values, e.g. ${cliExample(kind)}`;
  return { kind, args };
}

/** Builds a distribution from its kind and (already typed) arguments, or says what is wrong. */
export function makeDistribution(kind: DistributionKind, args: unknown[]): Distribution | SpaceProblem {
  if (kind === 'choice') return args.length > 0 ? { kind, values: args } : `choice: expected at least one value`;
  if (args.length !== 2) return `${kind}: expected two bounds [low, high], e.g. ${example(kind)}`;
  const [low, high] = args;
  if (typeof low !== 'number' || typeof high !== 'number' || !Number.isFinite(low) || !Number.isFinite(high)) {
    return `${kind}: expected two numbers [low, high], got ${JSON.stringify(args)}`;
  }
  if (!(low < high)) return `${kind}: expected low < high, got [${low}, ${high}]`;
  if (kind === 'loguniform' && low <= 0) return `loguniform: expected bounds > 0, got [${low}, ${high}]`;
  if (kind === 'int' && (!Number.isInteger(low) || !Number.isInteger(high))) return `int: expected whole-number bounds, got [${low}, ${high}]`;
  return { kind, low, high };
}

/**
 * Sample `index` (0-based) of a space whose dimensions are `dims`, in their order: one value per
 * dimension. Dimension d uses the d-th prime as its Halton base, shifted by a per-dimension offset
 * drawn from `seed` (a Cranley–Patterson rotation), so different seeds give different, equally even
 * designs.
 */
export function sampleAt(dims: Distribution[], index: number, seed: number): unknown[] {
  const shifts = seedShifts(seed, dims.length);
  return dims.map((dim, d) => {
    const u = fract(halton(index + 1, primeAt(d)) + shifts[d]!);
    return valueAt(dim, u);
  });
}

/** The value of `dim` at quantile `u` in [0, 1). */
export function valueAt(dim: Distribution, u: number): unknown {
  switch (dim.kind) {
    case 'choice':
      return dim.values[Math.min(dim.values.length - 1, Math.floor(u * dim.values.length))];
    case 'uniform':
      return significant(dim.low + u * (dim.high - dim.low));
    case 'loguniform':
      return significant(Math.exp(Math.log(dim.low) + u * (Math.log(dim.high) - Math.log(dim.low))));
    case 'int':
      return Math.min(dim.high, dim.low + Math.floor(u * (dim.high - dim.low + 1)));
  }
}

/** The radical inverse of `i` in `base`: the Halton sequence's i-th point in one dimension. */
export function halton(i: number, base: number): number {
  let result = 0;
  let f = 1 / base;
  for (let n = i; n > 0; n = Math.floor(n / base)) {
    result += f * (n % base);
    f /= base;
  }
  return result;
}

/**
 * Sampled values keep 6 significant digits: enough for any learning rate or dropout, and the
 * params, labels and MLflow values read `3.16228e-05` rather than `3.1622776601683795e-05`.
 */
function significant(x: number): number {
  return Number(x.toPrecision(6));
}

function fract(x: number): number {
  return x - Math.floor(x);
}

const primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97];

function primeAt(d: number): number {
  const p = primes[d];
  if (p !== undefined) return p;
  let candidate = primes[primes.length - 1]! + 2;
  for (let found = primes.length; ; candidate += 2) {
    if (primes.every((q) => candidate % q !== 0) && isPrime(candidate)) {
      if (found === d) return candidate;
      found++;
    }
  }
}

function isPrime(n: number): boolean {
  for (let q = 2; q * q <= n; q++) if (n % q === 0) return false;
  return n > 1;
}

/** `count` offsets in [0, 1) from `seed` (splitmix32): the same seed, the same design. */
function seedShifts(seed: number, count: number): number[] {
  if (seed === 0) return Array.from({ length: count }, () => 0);
  let state = seed >>> 0;
  return Array.from({ length: count }, () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 2 ** 32;
  });
}

function isKind(kind: string): kind is DistributionKind {
  return (distributionKinds as readonly string[]).includes(kind);
}

function example(kind: DistributionKind): string {
  return { choice: '{choice: [60, 100, 130]}', uniform: '{uniform: [0.1, 0.5]}', loguniform: '{loguniform: [1e-6, 1e-4]}', int: '{int: [5, 15]}' }[kind];
}

function cliExample(kind: DistributionKind): string {
  return { choice: 'choice(60,100,130)', uniform: 'uniform(0.1,0.5)', loguniform: 'loguniform(1e-6,1e-4)', int: 'int(5,15)' }[kind];
}

function forms(): string {
  return distributionKinds.map(example).join(', ');
}
