// The `pipe` command line: parses argv, calls the command in src/app, and turns how it ended into
// an exit code (src/cli/exit-codes.ts). Nothing below this layer imports it.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isPipeError, UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import { EXIT_INVALID, EXIT_OK, exitCodeOfError, exitCodeOfStatus } from './exit-codes.ts';

const usage = `pipe — declarative experiment pipelines with a caching DAG executor and MLflow tracking

Usage:
  pipe run FILE [-p NAME=VALUE]... [--force STAGE]... [--fail-fast] [--jobs N] [--backend B] [--json] [--verbose] [--no-track]
               [--queue redis://HOST:PORT] [--cache DIR] [--retries N] [--shards N] [--register NAME [--alias ALIAS]...]
  pipe status FILE [-p NAME=VALUE]... [--force STAGE]... [--backend B] [--json] [--cache DIR]
  pipe sweep FILE [-S NAME=V1,V2 | -S NAME=DIST(…)]... [--samples N] [--seed N] [-p NAME=VALUE]... [--dry-run]
               [--objective METRIC] [--json] [--jobs N] [--backend B] [--verbose] [--no-track]
               [--queue URL] [--cache DIR] [--retries N] [--shards N] [--register NAME [--alias ALIAS]...]
  pipe worker --queue redis://HOST:PORT [--cpus N] [--gpus N] [--cache DIR] [--name NAME]
  pipe gc [FILE...] [--dry-run] [--max-size SIZE] [--cache DIR]
  pipe predict MODEL IMAGE...                (MODEL: a directory, or models:/NAME/VERSION, models:/NAME@ALIAS)
  pipe register RUN|MODEL NAME [--alias ALIAS]...
  pipe ui [EXPERIMENT] [--host H] [--stop]
  pipe sync [--to URI | --drop RUN_DIR... | --drop-all]
  pipe doctor

Commands:
  run      run the pipeline: cached stages are reused, the rest run (in parallel where they may)
  status   say, for each stage, whether it would run and why
  sweep    run trials over parameter values; shared stages run once
  worker   take stage jobs from a Redis queue and run them (one per machine of a cluster)
  gc       remove cache entries that no pipeline references, stale locks and tmp dirs (--dry-run lists them;
           --max-size 50GB also removes the least recently used entries until the cache fits)
  predict  classify images with a model saved by an evaluate stage (or registered in MLflow)
  register make a run's logged model a version of registered model NAME in MLflow's Model Registry
  ui       start or find the MLflow server and print the URL of the runs
  sync     send tracking data that could not reach the MLflow server earlier
  doctor   check the installation: Node, tfjs and its native backend, GPUs, MLflow

Options:
  -p, --param NAME=VALUE   override a pipeline param (typed by its declaration)
  --force STAGE            re-run STAGE and what depends on it, even if cached
  --fail-fast              stop everything at the first failed stage
  --jobs N                 CPU slots (default: the number of cores)
  --backend auto|cpu|gpu   override the pipeline's tfjs backend
  -S, --sweep NAME=V1,V2   sweep: these values of a param (crossed with the other -S and the grid)
  -S NAME=DIST(A,B)        sweep: draw the param from loguniform(…), uniform(…), int(…) or choice(…)
  --samples N, --seed N    sweep: how many points of the sampled space, and which design (default seed 0)
  --json                   print the result as JSON on stdout
  --verbose                show every stage's output
  --no-track               do not record an MLflow run
  --register NAME          run/sweep: register the run's model (a sweep's best trial's) as NAME in MLflow
  --alias ALIAS            with register/--register: point this alias at the new version (repeatable)
  --queue URL              run the stages on \`pipe worker\`s through this Redis server (redis://HOST:PORT[/DB])
  --cache DIR              the artifact cache (a directory every worker reaches); default runs/cache
  --retries N              with --queue: run a failed stage again up to N times (default 1)
  --shards N               with --queue: split each stage that maps over its input (fetch, extract-features) into N jobs (default 1)
  --cpus N, --gpus N       worker: CPU slots (default: the cores) and GPUs (default: those found)
  --name NAME              worker: how runs name this worker (default HOST:PID)
  --to URI                 sync: send pending tracking data to this MLflow server instead of its own
  --drop RUN_DIR           sync: discard the run's pending tracking data (e.g. its server is gone)
  --drop-all               sync: discard every run's pending tracking data
`;

const runOptions = {
  param: { type: 'string', short: 'p', multiple: true },
  force: { type: 'string', multiple: true },
  'fail-fast': { type: 'boolean' },
  jobs: { type: 'string' },
  backend: { type: 'string' },
  json: { type: 'boolean' },
  verbose: { type: 'boolean' },
  'no-track': { type: 'boolean' },
  register: { type: 'string' },
  alias: { type: 'string', multiple: true },
  'dry-run': { type: 'boolean' },
  'max-size': { type: 'string' },
  sweep: { type: 'string', short: 'S', multiple: true },
  objective: { type: 'string' },
  samples: { type: 'string' },
  seed: { type: 'string' },
  host: { type: 'string' },
  stop: { type: 'boolean' },
  queue: { type: 'string' },
  cache: { type: 'string' },
  retries: { type: 'string' },
  shards: { type: 'string' },
  cpus: { type: 'string' },
  gpus: { type: 'string' },
  name: { type: 'string' },
  to: { type: 'string' },
  drop: { type: 'string', multiple: true },
  'drop-all': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

function parse(args: string[]) {
  return parseArgs({ args, options: runOptions, allowPositionals: true, strict: true });
}

const defaultIo: Io = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  isTTY: Boolean(process.stderr.isTTY) && !process.env['CI'],
};

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    io.out(usage);
    return command ? EXIT_OK : EXIT_INVALID;
  }
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(rest);
  } catch (error) {
    io.err(`pipe ${command}: ${(error as Error).message}\n\n${usage}`);
    return EXIT_INVALID;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(usage);
    return EXIT_OK;
  }
  try {
    return exitCodeOfStatus(await dispatch(command, positionals, values, io));
  } catch (error) {
    if (isPipeError(error)) {
      io.err(`${error.code === 'usage' ? '' : `pipe ${command}: `}${error.message}\n`);
      if (error.hint) io.err(`${error.hint}\n`);
    } else {
      // Anything else is unexpected: say what failed; the stack only when asked.
      const err = error as Error;
      io.err(`pipe ${command}: ${err.message ?? String(error)}\n`);
    }
    if (process.env['PIPE_DEBUG']) io.err(`${(error as Error).stack ?? ''}\n`);
    return exitCodeOfError(error);
  }
}

async function dispatch(command: string, positionals: string[], values: ReturnType<typeof parse>['values'], io: Io): Promise<CommandStatus> {
    switch (command) {
      case 'run':
      case 'status': {
        const file = single(positionals, `pipe ${command} FILE`);
        const { runCommand, statusCommand } = await import('../app/run.ts');
        return command === 'run' ? await runCommand(file, values, io) : await statusCommand(file, values, io);
      }
      case 'sweep': {
        const file = single(positionals, 'pipe sweep FILE');
        const { sweepCommand } = await import('../app/sweep.ts');
        return await sweepCommand(file, values, io);
      }
      case 'worker': {
        if (positionals.length > 0) throw new UsageError('usage: pipe worker --queue redis://HOST:PORT [--cpus N] [--gpus N] [--cache DIR] [--name NAME]');
        const { workerCommand } = await import('../app/worker.ts');
        return await workerCommand(values, io);
      }
      case 'gc': {
        const { gcCommand } = await import('../app/gc.ts');
        return await gcCommand(positionals, values, io);
      }
      case 'predict': {
        const [model, ...images] = positionals;
        if (!model || images.length === 0) throw new UsageError('pipe predict MODEL IMAGE...: give a model directory and at least one image');
        const { predict } = await import('../app/predict.ts');
        return await predict(model, images, (line) => io.out(`${line}\n`), { err: (line) => io.err(`${line}\n`) });
      }
      case 'register': {
        const [target, name] = positionals;
        if (!target || !name || positionals.length !== 2) throw new UsageError('usage: pipe register RUN|MODEL NAME [--alias ALIAS]...');
        const { registerCommand } = await import('../app/register.ts');
        return await registerCommand({ projectDir: process.cwd(), target, name, aliases: values.alias ?? [], print: (line) => io.out(`${line}\n`) });
      }
      case 'ui': {
        const { uiCommand } = await import('../app/ui.ts');
        return await uiCommand({
          projectDir: process.cwd(),
          experiment: positionals[0],
          host: values.host,
          stop: Boolean(values.stop),
          print: (line) => io.out(`${line}\n`),
          printError: (line) => io.err(`${line}\n`),
        });
      }
      case 'sync': {
        const { syncCommand } = await import('../app/sync.ts');
        if (positionals.length > 0) throw new UsageError('usage: pipe sync [--to URI | --drop RUN_DIR... | --drop-all]');
        return await syncCommand({ projectDir: process.cwd(), print: (line) => io.out(`${line}\n`), to: values.to, drop: values.drop, dropAll: values['drop-all'] });
      }
      case 'doctor': {
        const { doctor } = await import('../app/doctor.ts');
        return await doctor((line) => io.out(`${line}\n`));
      }
      default:
        io.err(`pipe: unknown command '${command}'\n\n${usage}`);
        return 'invalid';
    }
}

function single(positionals: string[], form: string): string {
  if (positionals.length !== 1 || !positionals[0]) throw new UsageError(`usage: ${form}`);
  return positionals[0];
}
