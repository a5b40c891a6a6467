/**
 * The producer side of batch prediction: `enqueuePredict` checks what it can at once — the model
 * (it must exist and be whole), the source's bucket (it must exist), the labels asked for — then
 * records the run and adds its planning job, and returns the run id, as `enqueueRun` does for a
 * training run. Listing and sharding are the planner's (services/planner/predict-plan.ts).
 */
import { requireRedisUrl } from '../shared/config.js';
import { BadRequestError, ModelError } from '../shared/errors.js';
import { modelKey } from '../shared/model-format.js';
import { RUN_LIMITS, predictRequestSchema, type PredictRequest } from '../shared/queues.js';
import { assertBucket, parseS3Url, s3Url } from '../shared/s3.js';
import { quote } from '../shared/text.js';
import { RUN_HERE, fetchModel, queueRun, type Client } from './client.js';

/** Labels per image when none are asked for (fewer when the model has fewer classes). */
export const DEFAULT_TOP = 3;

export interface PredictOptions {
  /** RUN, NAME (its latest version) or NAME@VERSION. */
  model: string;
  /** s3://bucket/prefix/ or s3://bucket/manifest.csv|.jsonl|.ndjson */
  source: string;
  /** Labels per image, 1 to the model's class count; default min(3, classes). */
  top?: number;
  /** Images per predict job (default DEEPFEAT_SHARD_SIZE). */
  shardSize?: number;
}

/**
 * Records a prediction run and adds its planning job; returns at once with the run id. A bad
 * source URL, a model that does not exist (NotFoundError) or is not whole (ModelError), a
 * bucket that does not exist, or a `top` the model cannot give fails here, before anything is
 * recorded (exit code 2).
 */
export async function enqueuePredict(client: Client, opts: PredictOptions): Promise<string> {
  requireRedisUrl(client.config, RUN_HERE);
  const src = parseS3Url(opts.source);
  const { artifact, uri } = await fetchModel(client, opts.model);
  // The run names the model by name and version, and the workers read it from there: it must be
  // the object just read.
  const key = modelKey(artifact.name, artifact.version);
  if (uri !== s3Url(client.config.bucket, key)) {
    throw new ModelError(
      `${quote(uri)} names itself ${quote(`${artifact.name}@${artifact.version}`)}, which is published at ` +
        `${quote(s3Url(client.config.bucket, key))}: download and publish it again, or name the other version`,
    );
  }
  const classes = artifact.classes.length;
  if (opts.top !== undefined && !(Number.isInteger(opts.top) && opts.top >= 1 && opts.top <= classes)) {
    throw new BadRequestError(
      `--top ${quote(String(opts.top), 40)}: model ${quote(`${artifact.name}@${artifact.version}`)} has ${classes} ` +
        `classes; ask for 1 to ${classes} labels per image`,
    );
  }
  // One clear message (BUCKET_NOT_FOUND, exit 2) before a run exists that could only fail.
  await assertBucket(client.s3, src.bucket);
  const candidate: PredictRequest = {
    kind: 'predict',
    source: opts.source,
    model: { name: artifact.name, version: artifact.version, key },
    top: opts.top ?? Math.min(DEFAULT_TOP, classes, RUN_LIMITS.top.max),
    shardSize: opts.shardSize ?? client.config.extractor.shardSize,
  };
  const parsed = predictRequestSchema.safeParse(candidate);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new BadRequestError(`invalid prediction request: ${issues.join('; ')}`);
  }
  return queueRun(client, parsed.data);
}
