/**
 * deepfeat — the command line. Producer and reader of the pipeline (run, status, download,
 * workers), launcher of workers (worker), and the one-command demo. Errors print one clear line
 * and exit non-zero: 2 when the request, configuration, dataset or model must change, 1 for a
 * fault (exit-codes.ts decides, the same way for an error here and for a failed run).
 */
import { existsSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { ENV_DOC, loadConfig } from '../shared/config.js';
import { BUILTIN_MODELS, INPUT_LAYOUTS, INPUT_RANGES } from '../shared/features.js';
import { backboneRows, formatBackbones } from './backbones.js';
import { parseS3Url, putJson } from '../shared/s3.js';
import { terminalSafeJson, terminalSafeLines } from '../shared/text.js';
import type { RunStatus } from '../shared/run-state.js';
import {
  createClient,
  downloadModel,
  enqueueRun,
  getFailures,
  getQueueCounts,
  getStatus,
  isTerminal,
  listWorkers,
  redisUnreachable,
  waitForRun,
  type Client,
} from './client.js';
import { formatDownloaded, formatError, formatFailure, formatStatus, table } from './format.js';
import { EXIT_BAD_INPUT, exitCodeForError, exitCodeForRun } from './exit-codes.js';
import { runProgress } from './progress.js';
import { KIND_NAMES, startWorkers } from './workers.js';
import { WORKER_KIND } from '../shared/worker-kit.js';
import { DEFAULT_DEMO, runDemo } from './demo.js';
import { DEMO_MAX_PER_CLASS } from './demo-data.js';
import { LOCAL_DIR, localDemoEnv } from './local-stack.js';
import {
  DEFAULT_LOCAL_EXTRACTORS,
  exitWithParent,
  type LocalWorkers,
  clientOf,
  startLocalServices,
  startLocalWorkers,
  waitForWorkers,
} from './local-pipeline.js';
import { featureSpec, parseName, parseSeed, parseShardSize, parseSplit, parseWholeNumber } from './flags.js';
import { DEFAULT_TOP, enqueuePredict } from './predict-client.js';
import { predictLocal } from './predict-local.js';
import { registerCacheCommand } from './cache.js';
import { registerServeCommand } from './serve.js';
import { DEFAULT_NEIGHBOURS, MAX_NEIGHBOURS, similar } from './similar.js';
import { SEARCH_SPLITS, type SearchSplit } from '../services/retrieval/run-index.js';
import { QUEUE_NAMES, RUN_LIMITS, makeQueue, type QueueName } from '../shared/queues.js';
import { BadRequestError, errorMessage } from '../shared/errors.js';

/**
 * Single-machine default for readers: with S3_ENDPOINT unset and a local .deepfeat/s3 folder
 * (left by the demo), serve that folder with the embedded S3 server for this command.
 */
async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const { env, stop } = await localDemoEnv();
  const client = createClient(loadConfig(env));
  try {
    return await fn(client);
  } finally {
    await client.close();
    await stop?.();
  }
}

const LOCAL_HELP =
  'run it on this machine: start redis-server (its own; data in .deepfeat/redis when that folder is here, so the ' +
  'feature cache carries over) and the workers (planner, trainer, evaluator, one extractor per core) for this ' +
  'command, wait for the run as --wait does, then stop them; Ctrl-C fails the run, drops its jobs and stops them; ' +
  "from the demo's folder with S3_ENDPOINT unset, on the demo's store";

// A reader that stops early (`deepfeat status RUN --all-failures | head`) closes the pipe: that is
// the reader's choice, not a fault, so end quietly with success instead of a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
}

const program = new Command()
  .name('deepfeat')
  .description('Labelled images in S3 -> deep features -> logistic regression -> published classifier')
  .showHelpAfterError()
  // Commander's own usage errors (unknown option, missing argument) are bad requests too: exit 2.
  // Set before the subcommands are declared, which copy it.
  .exitOverride()
  // Its messages quote what the user typed ("unknown option '--x\x1b]0;T'"): escape them like
  // every other message. Set before the subcommands are declared, which copy it.
  .configureOutput({ writeErr: (text) => process.stderr.write(terminalSafeLines(text)) })
  .addHelpText(
    'after',
    `\nEnvironment:\n${Object.entries(ENV_DOC)
      .map(([k, v]) => `  ${k.padEnd(26)} ${v}`)
      .join('\n')}`,
  );

program
  .command('run')
  .description('enqueue a dataset job; prints the run id at once')
  .argument('<source>', 's3://bucket/prefix/ (folder per class) or s3://bucket/manifest.csv|.jsonl')
  .option(
    '--name <name>',
    'model name to publish under: 1-100 letters, digits, . _ - (default: last part of the source)',
  )
  .addOption(
    new Option('--features <kind>', 'feature extractor').choices(['backbone', 'raw-pixels']).default('backbone'),
  )
  .option(
    '--model <path|s3url>',
    'your own TF.js model.json (graph or layers model) or ONNX model (.onnx) instead of the shipped backbone',
  )
  .option('--node <name>', 'node or layer to pool (with --model; or another node of the shipped backbone)')
  .option(
    '--backbone <name[:node]>',
    `shipped backbone to use: ${BUILTIN_MODELS.join(', ')} (default ${BUILTIN_MODELS[0]}), optionally at NODE; see deepfeat backbones`,
  )
  .option('--input-size <n>', 'square input size of --model, 8 to 2048 (default: from the model)')
  .addOption(new Option('--input-range <range>', 'pixel range --model expects').choices(INPUT_RANGES))
  .addOption(
    new Option('--input-layout <layout>', 'ONNX --model: image layout, when its input shape does not tell').choices(
      INPUT_LAYOUTS,
    ),
  )
  .option('--mean <r,g,b>', 'ONNX --model: per-channel mean subtracted after --input-range (torchvision Normalize)')
  .option('--std <r,g,b>', 'ONNX --model: per-channel std divided by after --mean (torchvision Normalize)')
  .option(
    '--flip',
    "flip averaging (the default for backbones): each image's vector is averaged with its mirror image's",
  )
  .option(
    '--no-flip',
    'no flip averaging: about half the extraction time, about 2 points lower accuracy on the demo (README "accuracy levers")',
  )
  .option(
    '--multi-scale',
    'features at the input size and at half of it, concatenated (default for the shipped backbones; TF.js --model: asks for it)',
  )
  .option('--no-multi-scale', 'features at the input size only (about 1.3x faster extraction than multi-scale)')
  .option('--seed <n>', 'seed of the stratified split, 0 to 4294967295', '42')
  .option('--split <fractions>', 'train,val,test fractions when the data has no split folders', '0.7,0.1,0.2')
  .option('--shard-size <n>', 'images per extract job, 1 to 100000 (default: DEEPFEAT_SHARD_SIZE)')
  .option(
    '--priority <n>',
    `0 to 9, higher is served first; runs of equal priority share the extractors shard by shard (default ${RUN_LIMITS.priority.default})`,
  )
  .option(
    '--wait',
    'wait for the run to finish, with progress; if it fails, exit 2 (bad dataset, model or bucket) or 1 (a fault)',
  )
  .option('--local', LOCAL_HELP)
  .option('--json', 'print JSON')
  .action(async (source: string, o) => {
    // Every flag and the source are checked before anything is started or connected to.
    parseS3Url(source);
    const request = {
      source,
      ...(o.name !== undefined ? { name: parseName(o.name) } : {}),
      features: featureSpec(o),
      seed: parseSeed(o.seed),
      split: parseSplit(o.split),
      ...(o.shardSize !== undefined ? { shardSize: parseShardSize(o.shardSize) } : {}),
      ...(o.priority !== undefined
        ? { priority: parseWholeNumber('--priority', o.priority, RUN_LIMITS.priority, 'higher is served first') }
        : {}),
    };
    if (o.local) {
      await onThisMachine((client) => enqueueRun(client, request), o);
      return;
    }
    await withClient(async (client) => {
      const runId = await enqueueRun(client, request);
      await warnMissingWorkers(client, TRAINING_QUEUES);
      await printOrWait(client, runId, o);
    });
  });

program
  .command('predict')
  .description(
    'classify images with a published model: local files and folders (printed at once), or every image under ' +
      's3://bucket/prefix/ or in a manifest as a pipeline run (prints the run id at once)',
  )
  .argument('<ref>', 'RUN, NAME (its latest version) or NAME@VERSION')
  .argument('<targets...>', 'image files or folders; or one s3://bucket/prefix/ or s3://bucket/manifest.csv|.jsonl')
  .option('--top <k>', `labels per image, most probable first: 1 to the model's class count (default ${DEFAULT_TOP})`)
  .option('--json', 'print JSON')
  .option('--csv', 'print CSV (local files; a batch run writes runs/RUN/predictions.csv)')
  .option('--wait', 'batch: wait for the run to finish, with progress; if it fails, exit 2 or 1 as for run')
  .option('--shard-size <n>', 'batch: images per predict job, 1 to 100000 (default: DEEPFEAT_SHARD_SIZE)')
  .option('--local', `batch: ${LOCAL_HELP}`)
  .action(async (ref: string, targets: string[], o) => {
    // Every flag is checked before anything is connected to.
    const top =
      o.top === undefined
        ? undefined
        : parseWholeNumber('--top', o.top, RUN_LIMITS.top, "labels per image, up to the model's class count");
    const batch = targets.filter((t) => t.startsWith('s3://'));
    if (batch.length === 0) {
      for (const flag of ['wait', 'shardSize', 'local'] as const) {
        if (o[flag] !== undefined) {
          throw new BadRequestError(
            `--${flag === 'shardSize' ? 'shard-size' : flag} is for batch runs over s3://: drop it to classify local files`,
          );
        }
      }
      if (o.json && o.csv) throw new BadRequestError('--json and --csv ask for two formats: choose one');
      const format = o.json ? 'json' : o.csv ? 'csv' : 'table';
      await withClient(async (client) => {
        process.exitCode = await predictLocal(client, ref, targets, { top, format });
      });
      return;
    }
    if (targets.length !== 1) {
      throw new BadRequestError(
        `a batch prediction takes one source, s3://bucket/prefix/ or s3://bucket/manifest.csv, not ${targets.length} ` +
          'targets: start one run per source, or give local files and folders only',
      );
    }
    if (o.csv) {
      throw new BadRequestError(
        '--csv is for local files: a batch run writes runs/RUN/predictions.csv (deepfeat status RUN says where)',
      );
    }
    const source = targets[0]!;
    parseS3Url(source);
    const shardSize = o.shardSize === undefined ? undefined : parseShardSize(o.shardSize);
    const request = {
      model: ref,
      source,
      ...(top !== undefined ? { top } : {}),
      ...(shardSize !== undefined ? { shardSize } : {}),
    };
    if (o.local) {
      await onThisMachine((client) => enqueuePredict(client, request), o);
      return;
    }
    await withClient(async (client) => {
      const runId = await enqueuePredict(client, request);
      await warnMissingWorkers(client, PREDICTION_QUEUES);
      await printOrWait(client, runId, o);
    });
  });

program
  .command('similar')
  .description(
    "the images of a run most similar to each query image (cosine similarity of the run's deep features), " +
      "found with the run's own backbone; a query that cannot be used gets its reason and the others still print",
  )
  .argument('<ref>', 'NAME (its latest version), NAME@VERSION, or RUN (a run with features and no model yet, too)')
  .argument('<queries...>', 'image files, or objects s3://bucket/key')
  .option(
    '-k, --neighbours <k>',
    `images per query, most similar first: 1 to ${MAX_NEIGHBOURS}`,
    String(DEFAULT_NEIGHBOURS),
  )
  .addOption(
    new Option('--split <split>', "search one split of the run's images, or all").choices(SEARCH_SPLITS).default('all'),
  )
  .option('--memory <MiB>', "most memory the run's index may take (default: half of this host's or container's memory)")
  .option('--json', 'print JSON lines, one per query')
  .action(async (ref: string, queries: string[], o) => {
    // Every flag is checked before anything is connected to.
    const k = parseWholeNumber('-k', o.neighbours, { min: 1, max: MAX_NEIGHBOURS }, 'images per query');
    const memoryMiB =
      o.memory === undefined
        ? undefined
        : parseWholeNumber('--memory', o.memory, { min: 1, max: 2 ** 30 }, "MiB the run's index may take");
    await withClient(async (client) => {
      process.exitCode = await similar(client, ref, queries, {
        k,
        split: o.split as SearchSplit,
        format: o.json ? 'json' : 'table',
        ...(memoryMiB !== undefined ? { memoryMiB } : {}),
      });
    });
  });

/** The queues a training run's jobs go through, and a prediction run's. */
const TRAINING_QUEUES: readonly QueueName[] = ['plan', 'extract', 'train', 'evaluate'];
const PREDICTION_QUEUES: readonly QueueName[] = ['plan', 'predict', 'collect'];

/**
 * A warning per worker kind the run needs that no live worker serves: the run waits until one
 * starts. Asked by queue, so an extractor of an older deepfeat, which serves no predict queue,
 * is not taken for one that does; named by kind, as users start them.
 */
async function warnMissingWorkers(client: Client, queues: readonly QueueName[]): Promise<void> {
  const live = await listWorkers(client);
  const missing = new Set(queues.filter((q) => !live.some((w) => w.queues.includes(q))).map((q) => WORKER_KIND[q]));
  for (const kind of missing) {
    console.error(
      `warning: no ${kind} worker is running on this Redis (${client.config.queuePrefix}); the run waits until one starts: deepfeat worker ${kind} (or all)`,
    );
  }
}

/**
 * `--local`: the pipeline on this machine for this command (local-pipeline.ts, as the demo runs
 * it): a Redis of its own in a temporary folder, the run queued by `enqueue` (which checks the
 * request against the store before any worker starts), the workers, the run waited for and its
 * status printed; everything stops at the end. Worker logs and progress go to stderr, so stdout
 * holds only the status (or its JSON). Ctrl-C (SIGINT) or SIGTERM fails the run with that reason
 * (in Redis and in runs/<id>/run.json) before stopping: nothing is left half-done to be resumed.
 */
async function onThisMachine(enqueue: (client: Client) => Promise<string>, o: { json?: boolean }): Promise<void> {
  if (process.env.REDIS_URL) {
    // Workers of this machine on a shared Redis would take other hosts' jobs against this
    // machine's store, and other hosts' workers this command's jobs.
    throw new BadRequestError(
      '--local starts a Redis and workers of its own: unset REDIS_URL to run on this machine, or drop --local to ' +
        "queue the run for the workers on REDIS_URL's Redis",
    );
  }
  const say = (line: string) => console.error(line);
  const dataDir = existsSync(LOCAL_DIR) ? LOCAL_DIR : undefined;
  // Redis keeps its data in the demo's folder when there is one: the feature cache's index lives
  // there, so a --local run over images the demo (or an earlier command) extracted reuses them.
  const services = await startLocalServices(process.env, {
    dataDir,
    embeddedS3: 'if-present',
    say,
  });
  const client = await clientOf(services);
  let workers: LocalWorkers | undefined;
  let runId: string | undefined;
  let interrupted: NodeJS.Signals | undefined;
  const stopped = new Promise<never>((_, reject) => {
    const onSignal = (signal: NodeJS.Signals) => {
      interrupted ??= signal;
      reject(new InterruptedError(signal));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  stopped.catch(() => undefined);
  try {
    runId = await Promise.race([enqueue(client), stopped]);
    workers = startLocalWorkers(services.env, DEFAULT_LOCAL_EXTRACTORS, say, { logLevel: 'fatal' });
    await Promise.race([waitForWorkers(client, workers), stopped]);
    await Promise.race([printOrWait(client, runId, { ...o, local: true }), stopped]);
  } catch (err) {
    if (!(err instanceof InterruptedError)) throw err;
    if (runId) await failInterrupted(client, runId, err.signal);
    process.exitCode = 130;
  } finally {
    await workers?.stop();
    // Written once the workers have stopped: a planner still at work would write its own run.json.
    if (interrupted && runId) await storeFinalStatus(client, runId, o);
    // The jobs the interrupted run left would be taken up by the next command's workers on this
    // Redis (the only ones on it: REDIS_URL is refused with --local): remove them.
    if (interrupted) await dropQueuedJobs(client);
    await client.close().catch(() => undefined);
    await services.stop();
    if (interrupted) process.exit(130);
  }
}

class InterruptedError extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
  }
}

/** Records a --local run stopped by a signal as failed in Redis, so its workers take no more of it. */
async function failInterrupted(client: Client, runId: string, signal: NodeJS.Signals) {
  const how = signal === 'SIGINT' ? 'Ctrl-C' : signal;
  try {
    await client.runs!.fail(runId, 'INTERNAL', `stopped: the --local command was interrupted (${how}); start it again`);
  } catch (err) {
    console.error(`run ${runId}: could not record the interruption: ${errorMessage(err)}`);
  }
  console.error(`run ${runId} failed: interrupted (${how}); its workers are stopping`);
}

/** Removes every job of every queue on the client's Redis and prefix (a --local command's own). */
async function dropQueuedJobs(client: Client) {
  for (const name of QUEUE_NAMES) {
    const queue = makeQueue(client.queues!, name);
    try {
      await queue.obliterate({ force: true });
    } catch (err) {
      console.error(`could not remove the ${name} queue's jobs: ${errorMessage(err)}`);
    } finally {
      await queue.close();
    }
  }
}

/** The run's status as Redis has it, copied to runs/<id>/run.json for `status` once Redis is gone. */
async function storeFinalStatus(client: Client, runId: string, o: { json?: boolean }) {
  try {
    const status = await getStatus(client, runId);
    await putJson(client.s3, client.config.bucket, `runs/${runId}/run.json`, status);
    if (o.json) console.log(terminalSafeJson(status, 2));
  } catch (err) {
    console.error(`run ${runId}: could not store its final status: ${errorMessage(err)}`);
  }
}

/** After a run is queued: its id at once, or with --wait its progress, final status and exit code. */
async function printOrWait(
  client: Client,
  runId: string,
  o: { wait?: boolean; json?: boolean; local?: boolean },
): Promise<void> {
  if (!o.wait && !o.local) {
    console.log(o.json ? terminalSafeJson({ runId }) : runId);
    return;
  }
  if (!o.json) {
    const stops = o.local ? 'Ctrl-C fails the run and stops its workers' : 'Ctrl-C stops waiting, not the run';
    console.error(`run ${runId} queued; waiting (${stops})`);
  }
  const progress = o.json ? undefined : runProgress(process.stderr);
  let s: RunStatus;
  try {
    s = await waitForRun(client, runId, (st) => progress?.update(st));
  } finally {
    progress?.stop();
  }
  console.log(o.json ? terminalSafeJson(s, 2) : formatStatus(s));
  process.exitCode = exitCodeForRun(s);
}

program
  .command('status')
  .description(
    'stage, progress, failures, throughput, ETA and metrics of a run; a failed run exits 2 (bad dataset, model or bucket) or 1',
  )
  .argument('<run>', 'run id')
  .option('--watch', 'refresh until the run ends')
  .option('--json', 'print JSON')
  .option('--all-failures', 'list every failed image with its reason, one per line (JSON lines with --json)')
  .action(async (runId: string, o) => {
    await withClient(async (client) => {
      let s = await getStatus(client, runId);
      if (o.allFailures) {
        // Streamed shard by shard: a million failures never become one document in memory.
        for await (const f of getFailures(client, runId)) console.log(o.json ? terminalSafeJson(f) : formatFailure(f));
        process.exitCode = exitCodeForRun(s);
        return;
      }
      // A terminal gets the whole status redrawn in place; anything else (a log, a pipe) gets
      // plain progress lines, never screen-clearing escapes.
      const redraw = !o.json && process.stdout.isTTY;
      const progress = o.watch && !o.json && !redraw ? runProgress(process.stdout) : undefined;
      while (o.watch && !isTerminal(s)) {
        if (redraw) process.stdout.write(`\x1b[2J\x1b[H${formatStatus(s)}\n`);
        progress?.update(s);
        await new Promise((r) => setTimeout(r, 1000));
        s = await getStatus(client, runId);
      }
      console.log(o.json ? terminalSafeJson(s, 2) : formatStatus(s));
      process.exitCode = exitCodeForRun(s);
    });
  });

program
  .command('download')
  .description('write a published version (model.json, classifier.onnx) to a folder')
  .argument('<ref>', 'RUN, NAME (latest version) or NAME@VERSION')
  .requiredOption('-o, --out <dir>', 'output folder')
  .action(async (ref: string, o) => {
    await withClient(async (client) => {
      const { path, artifact, files } = await downloadModel(client, ref, o.out);
      console.log(formatDownloaded(path, artifact, files));
    });
  });

program
  .command('backbones')
  .description('the shipped backbones: input size, default node, dimension, engine, measured speed and accuracy')
  .option('--json', 'print JSON')
  .action((o) => {
    const rows = backboneRows();
    if (o.json) return console.log(terminalSafeJson(rows, 2));
    console.log(formatBackbones(rows));
  });

program
  .command('workers')
  .description('live workers and job counts of each queue')
  .option('--json', 'print JSON')
  .action(async (o) => {
    await withClient(async (client) => {
      const [workers, counts] = await Promise.all([listWorkers(client), getQueueCounts(client)]);
      if (o.json) return console.log(terminalSafeJson({ workers, counts }, 2));
      console.log(
        table([
          ['kind', 'worker', 'queues', 'address', 'age'],
          ...workers.map((w) => [w.kind, w.name, w.queues.join(','), w.addr, `${w.age}s`]),
        ]),
      );
      console.log(
        '\n' +
          table([
            ['queue', 'waiting', 'active', 'delayed', 'waiting-children', 'completed', 'failed'],
            ...Object.entries(counts).map(([q, c]) => [
              q,
              ...['waiting', 'active', 'delayed', 'waiting-children', 'completed', 'failed'].map((k) =>
                String(c[k] ?? 0),
              ),
            ]),
          ]),
      );
    });
  });

program
  .command('worker')
  .description('run pipeline workers in this process until SIGTERM (start more processes, on more hosts, to scale)')
  .argument('<kind>', KIND_NAMES.join(' | '))
  .option('--concurrency <n>', 'jobs at once per worker', '1')
  .action(async (kind: string, o) => {
    const n = parseWholeNumber('--concurrency', o.concurrency, { min: 1, max: 256 }, 'jobs at once per worker');
    startWorkers(loadConfig(), kind, n);
    exitWithParent();
    await new Promise(() => undefined); // runs until a signal closes it
  });

registerCacheCommand(program, withClient);
registerServeCommand(program);

program
  .command('demo')
  .description('the whole pipeline on this machine: CIFAR-10 cats vs dogs, raw pixels vs deep features')
  .option('--per-class <n>', 'images per class (max 1000)', String(DEFAULT_DEMO.perClass))
  .option('--extractors <n>', 'extractor processes', String(DEFAULT_DEMO.extractors))
  .action(async (o) => {
    process.exitCode = await runDemo({
      perClass: parseWholeNumber('--per-class', o.perClass, { min: 1, max: DEMO_MAX_PER_CLASS }, 'images per class'),
      extractors: parseWholeNumber('--extractors', o.extractors, { min: 1, max: 64 }, 'extractor processes'),
      dataDir: LOCAL_DIR,
    });
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Commander has printed its message (and the help); --help and --version exit 0.
    process.exitCode = err.exitCode === 0 ? 0 : EXIT_BAD_INPUT;
  } else {
    console.error(formatError(redisUnreachable(err) ?? err));
    process.exitCode = exitCodeForError(err);
  }
}
