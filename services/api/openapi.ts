/**
 * The OpenAPI 3 document at /v1/openapi.json, generated from the zod schemas the handlers use
 * (schemas.ts; the run request is shared/queues.ts's), so the document and the checks cannot
 * drift apart.
 */
import type { z } from 'zod';
import { zodToJsonSchema } from 'zod-to-json-schema';
import {
  errorSchema,
  modelListSchema,
  modelVersionsSchema,
  predictResultSchema,
  runBodySchema,
  runCreatedSchema,
  runListSchema,
  runProgressSchema,
  runStatusSchema,
} from './schemas.js';

const json = (schema: z.ZodTypeAny) => {
  const { $schema: _drop, ...rest } = zodToJsonSchema(schema, { target: 'openApi3', $refStrategy: 'none' }) as Record<
    string,
    unknown
  >;
  return openApi30(rest) as Record<string, unknown>;
};

/**
 * What OpenAPI 3.0's schema dialect lacks, rewritten: a tuple (`items: [a, b, c]`, from z.tuple)
 * becomes an array of exactly that length whose items are one schema (or any of them).
 */
function openApi30(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(openApi30);
  if (node === null || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) out[k] = openApi30(v);
  if (Array.isArray(out.items)) {
    const items = out.items as unknown[];
    const same = items.every((i) => JSON.stringify(i) === JSON.stringify(items[0]));
    out.items = same ? items[0] : { anyOf: items };
    out.minItems = items.length;
    out.maxItems = items.length;
    delete out.additionalItems;
  }
  return out;
}

const content = (schema: z.ZodTypeAny) => ({ 'application/json': { schema: json(schema) } });
const errorResponse = (description: string) => ({ description, content: content(errorSchema) });

/** The error answers every authenticated route can give. */
const AUTH_ERRORS = {
  '401': errorResponse('no bearer token, or not a valid one'),
  '403': errorResponse('the token is valid but its role may not do this (writes need admin)'),
};

const pathParam = (name: string, description: string, pattern?: string) => ({
  name,
  in: 'path',
  required: true,
  description,
  schema: { type: 'string', ...(pattern ? { pattern } : {}) },
});

const RUN_ID = pathParam('id', 'run id, e.g. r20261128093000-1a2b3c', '^r\\d{14}-[0-9a-f]{6}$');
const MODEL_NAME = pathParam('name', 'model name', '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$');

export function openApiDocument(version: string): Record<string, unknown> {
  return {
    openapi: '3.0.3',
    info: {
      title: 'deepfeat',
      version,
      description:
        'Labelled images in S3 -> deep features -> logistic regression -> published classifier. The same client ' +
        'library as the deepfeat CLI. Errors are JSON {code, message}.',
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'DEEPFEAT_API_TOKENS: read or admin' },
      },
    },
    security: [{ bearer: [] }],
    paths: {
      '/healthz': {
        get: { summary: 'the process answers', security: [], responses: { '200': { description: 'ok' } } },
      },
      '/readyz': {
        get: {
          summary: 'Redis answers and the artifacts bucket is reachable',
          security: [],
          responses: { '200': { description: 'ready' }, '503': errorResponse('a dependency is not reachable') },
        },
      },
      '/v1/runs': {
        post: {
          summary: 'record a run and queue its planning (deepfeat run); admin',
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              description: 'a retry with the same key and body gets the same run (200); another body is 409',
              schema: { type: 'string', pattern: '^[A-Za-z0-9_.:-]{1,100}$' },
            },
          ],
          requestBody: { required: true, content: content(runBodySchema) },
          responses: {
            '202': { description: 'queued', content: content(runCreatedSchema) },
            '200': { description: 'already queued with this Idempotency-Key', content: content(runCreatedSchema) },
            '409': errorResponse('the Idempotency-Key was used with another body, or its first request is in flight'),
            '400': errorResponse('malformed JSON'),
            '413': errorResponse('body larger than the limit'),
            '415': errorResponse('not application/json'),
            '422': errorResponse('the request does not satisfy the run schema (each problem named)'),
            ...AUTH_ERRORS,
          },
        },
        get: {
          summary: 'recent runs, newest first',
          parameters: [
            { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 100, default: 20 } },
          ],
          responses: { '200': { description: 'runs', content: content(runListSchema) }, ...AUTH_ERRORS },
        },
      },
      '/v1/runs/{id}': {
        get: {
          summary: 'a run status (deepfeat status --json)',
          parameters: [RUN_ID],
          responses: {
            '200': { description: 'status', content: content(runStatusSchema) },
            '400': errorResponse('not a run id'),
            '404': errorResponse('no such run'),
            ...AUTH_ERRORS,
          },
        },
      },
      '/v1/runs/{id}/events': {
        get: {
          summary: 'server-sent events: `status` (progress) on each change, then `end` (the final status) or `error`',
          parameters: [RUN_ID],
          responses: {
            '200': {
              description: 'text/event-stream; each data line is JSON',
              content: { 'text/event-stream': { schema: json(runProgressSchema) } },
            },
            '404': errorResponse('no such run'),
            ...AUTH_ERRORS,
          },
        },
      },
      '/v1/queues': {
        get: {
          summary:
            'job counts per queue by state, and backlog (waiting + prioritized + paused: ready, not started), ' +
            'which KEDA scales extractors on',
          responses: { '200': { description: 'counts' }, ...AUTH_ERRORS },
        },
      },
      '/v1/models': {
        get: {
          summary: 'published model names',
          responses: { '200': { description: 'names', content: content(modelListSchema) }, ...AUTH_ERRORS },
        },
      },
      '/v1/models/{name}': {
        get: {
          summary: "a model's versions, newest first, and the latest",
          parameters: [MODEL_NAME],
          responses: {
            '200': { description: 'versions', content: content(modelVersionsSchema) },
            '404': errorResponse('no such model'),
            ...AUTH_ERRORS,
          },
        },
      },
      '/v1/models/{name}/{version}/files/{file}': {
        get: {
          summary: "a file of the version's folder in the bucket (model.json, classifier.onnx), streamed",
          parameters: [
            MODEL_NAME,
            pathParam('version', 'a version (run id) or latest'),
            pathParam('file', 'file name, e.g. model.json'),
          ],
          responses: {
            '200': { description: 'the file', content: { 'application/octet-stream': {}, 'application/json': {} } },
            '400': errorResponse('name, version or file is not a plain name'),
            '404': errorResponse('no such model, version or file'),
            ...AUTH_ERRORS,
          },
        },
      },
      '/v1/models/{name}/predict': {
        post: {
          summary: 'classify uploaded images (deepfeat predict NAME FILE...); read',
          parameters: [MODEL_NAME],
          requestBody: {
            required: true,
            content: {
              'multipart/form-data': {
                schema: {
                  type: 'object',
                  properties: {
                    image: { type: 'array', items: { type: 'string', format: 'binary' } },
                    top: { type: 'integer', minimum: 1 },
                    version: { type: 'string', description: 'a version (run id); default latest' },
                  },
                  required: ['image'],
                },
              },
            },
          },
          responses: {
            '200': { description: 'one row per image, in order', content: content(predictResultSchema) },
            '413': errorResponse('an image or the number of files is over the limit'),
            '415': errorResponse('not multipart/form-data'),
            '422': errorResponse('no image, or top out of range'),
            '503': errorResponse('too many predictions at once; retry'),
            ...AUTH_ERRORS,
          },
        },
      },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics (text format)',
          responses: { '200': { description: 'metrics' }, ...AUTH_ERRORS },
        },
      },
      '/admin/queues': {
        get: { summary: 'bull-board (admin)', responses: { '200': { description: 'HTML' }, ...AUTH_ERRORS } },
      },
      '/login': {
        get: { summary: 'browser sign-in form (HTML)', security: [], responses: { '200': { description: 'HTML' } } },
        post: {
          summary:
            'sign in from the form: sets an HttpOnly, SameSite=Strict cookie holding the token (same-origin only)',
          security: [],
          requestBody: {
            content: {
              'application/x-www-form-urlencoded': {
                schema: {
                  type: 'object',
                  properties: { token: { type: 'string' }, next: { type: 'string' } },
                  required: ['token'],
                },
              },
            },
          },
          responses: {
            '303': { description: 'signed in; to next' },
            '401': { description: 'not a valid token' },
            '403': { description: 'not from this server’s page' },
          },
        },
      },
      '/logout': {
        post: {
          summary: 'clears the sign-in cookie',
          security: [],
          responses: { '303': { description: 'to /login' } },
        },
      },
      '/reports': {
        get: { summary: 'run list page (HTML)', responses: { '200': { description: 'HTML' }, ...AUTH_ERRORS } },
      },
      '/reports/{id}': {
        get: {
          summary: 'run report page (HTML)',
          parameters: [RUN_ID],
          responses: { '200': { description: 'HTML' }, '404': errorResponse('no such run'), ...AUTH_ERRORS },
        },
      },
    },
  };
}
