// The layering of src/, checked by `npm run lint:deps` (and by test/architecture.test.ts in
// `npm test`). Layers, top to bottom; each imports only the layers below it. Type-only imports are
// exempt (they vanish at run time). README.md's "Layout" section says what each layer holds.
const layers = [
  'cli', //       argv, usage, exit codes
  'app', //       use cases: run, status, sweep, gc, predict, doctor, ui, sync, worker
  'queue', //     BullMQ: the queue runner (submit) and the worker's job processor
  'tracking', //  MLflow: client, server, journal, tracker, sync
  'render', //    terminal and log output of run events, diagnostics
  'exec', //      runners, the run book, one stage in a child process, slots, the TF runtime
  'plan', //      plans with reasons, sweeps as merged plans
  'cache', //     content-addressed entries, fingerprints, the runs/ folder layout
  'pipeline', //  YAML → validated pipeline → analyzed DAG
  'stages', //    the stage kinds and their registry
  'ml', //        TensorFlow.js: MobileNetV2, training, images, plots
  'util', //      hashing, files, formats, downloads, zip
  'core', //      errors, diagnostics, events, Io, the stage-kind contract (the bottom: every layer may throw a PipeError)
];

const upward = layers.map((layer, i) => ({
  name: `${layer}-imports-only-below`,
  comment: `src/${layer}/ may import only the layers below it: ${layers.slice(i + 1).join(', ') || 'none'}`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: {
    path: `^src/(${layers.slice(0, i + 1).filter((l) => l !== layer).join('|') || '$^'})/`,
    dependencyTypesNot: ['type-only'],
  },
}));

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'No import circles, type-only ones included.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'nothing-imports-cli',
      comment: 'src/cli/ is the top: argv, Io, exit codes. Nothing imports it.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/cli/' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'registry-only-from-app-and-stage-process',
      comment: 'The stage-kind registry is chosen by the use cases (app/) and loaded by the stage process; the rest get it passed in.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(app/|exec/stage-process\\.ts$|stages/)' },
      to: { path: '^src/stages/index\\.ts$' },
    },
    {
      name: 'stages-only-from-registry',
      comment: 'A stage kind is reached through the registry, not imported directly (stages may share code among themselves).',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/stages/' },
      to: { path: '^src/stages/(?!index\\.ts$)' },
    },
    ...upward,
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|test|bench|scripts)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.json'] },
    moduleSystems: ['es6'],
  },
};
