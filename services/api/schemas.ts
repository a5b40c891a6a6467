/**
 * The API's request and response shapes, as zod schemas: the handlers validate with them and the
 * OpenAPI document is generated from them (openapi.ts). The run request is `deepfeat run`'s own
 * schema (shared/queues.ts `runRequestSchema`), with the fields the CLI fills in when a flag is
 * not given made optional here in the same way; enqueueRun then fills them and checks the whole
 * request with that schema, exactly as for the CLI.
 */
import { z } from 'zod';
import { runRequestSchema } from '../../shared/queues.js';
import { RUN_ID_PATTERN, STAGE_ORDER, PREDICT_STAGE_ORDER } from '../../shared/run-state.js';

/** POST /v1/runs: `deepfeat run`'s request; only `source` is required (defaults as the CLI's). */
export const runBodySchema = runRequestSchema.omit({ kind: true }).partial().required({ source: true }).strict();
export type RunBody = z.infer<typeof runBodySchema>;

export const errorSchema = z.object({
  code: z.string().describe('stable error code, e.g. BAD_REQUEST, NOT_FOUND, UNAUTHORIZED, PAYLOAD_TOO_LARGE'),
  message: z.string().describe('what is wrong and how to fix it'),
});

export const runCreatedSchema = z.object({
  runId: z.string().regex(RUN_ID_PATTERN),
  status: z.string().describe('URL of the run status'),
  events: z.string().describe('URL of the run events (text/event-stream)'),
});

const stageSchema = z.enum([...new Set([...STAGE_ORDER, ...PREDICT_STAGE_ORDER, 'failed'])] as [string, ...string[]]);

export const runSummarySchema = z.object({
  runId: z.string(),
  kind: z.enum(['train', 'predict']),
  name: z.string().nullable().describe('model name (training) or model used (prediction, NAME@VERSION)'),
  source: z.string(),
  stage: stageSchema,
  total: z.number().int(),
  done: z.number().int(),
  failed: z.number().int(),
  createdAt: z.string(),
  updatedAt: z.string(),
});

export const runListSchema = z.object({ runs: z.array(runSummarySchema) });

/** GET /v1/runs/:id answers the same document as `deepfeat status RUN --json`; its main fields. */
export const runStatusSchema = z
  .object({
    runId: z.string(),
    request: z.object({}).passthrough(),
    stage: stageSchema,
    total: z.number().int(),
    done: z.number().int(),
    failed: z.number().int(),
    shards: z.number().int(),
    shardsDone: z.number().int(),
    failures: z.array(z.object({ key: z.string(), reason: z.string() })),
    failuresTotal: z.number().int(),
    imagesPerSecond: z.number().nullable(),
    etaSeconds: z.number().nullable(),
    engine: z.string().nullable(),
    metrics: z.object({}).passthrough().nullable(),
    model: z.object({ name: z.string(), version: z.string(), uri: z.string() }).passthrough().nullable(),
    error: errorSchema.nullable(),
  })
  .passthrough();

export const runProgressSchema = z.object({
  runId: z.string(),
  stage: stageSchema,
  total: z.number().int(),
  done: z.number().int(),
  failed: z.number().int(),
  shards: z.number().int(),
  shardsDone: z.number().int(),
  imagesPerSecond: z.number().nullable(),
  etaSeconds: z.number().nullable(),
  engine: z.string().nullable(),
  error: errorSchema.nullable(),
  model: z.object({}).passthrough().nullable(),
  updatedAt: z.string(),
});

export const modelListSchema = z.object({ models: z.array(z.string()), truncated: z.boolean() });
export const modelVersionsSchema = z.object({
  name: z.string(),
  latest: z.string().nullable(),
  versions: z.array(z.string()),
  truncated: z.boolean(),
});

export const predictResultSchema = z.object({
  model: z.object({ name: z.string(), version: z.string() }),
  predictions: z.array(
    z.union([
      z.object({ file: z.string(), top: z.array(z.object({ label: z.string(), probability: z.number() })) }),
      z.object({ file: z.string(), error: z.string() }),
    ]),
  ),
});

export const listQuerySchema = z.object({ limit: z.coerce.number().int().min(1).max(100).default(20) }).strict();
