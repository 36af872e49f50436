// TEMPORARY until src/runtime.ts lands: the runtime facts the planner needs.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);

export function resolveFlavour(requested: 'auto' | 'cpu' | 'gpu'): 'cpu' | 'gpu' {
  if (requested === 'gpu') throw new Error('the gpu flavour is not installed: run `npm run setup -- --gpu`');
  return 'cpu';
}

export function gpuIds(): string[] {
  return [];
}

export function tensorflowRuntime(flavour: 'cpu' | 'gpu'): Record<string, string> {
  const name = flavour === 'gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
  let version = 'missing';
  try {
    version = (require(`${name}/package.json`) as { version: string }).version;
  } catch {
    // not installed
  }
  return { tfjs: version, flavour: name };
}
