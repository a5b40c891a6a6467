/**
 * Published models as the API lists and serves them: names under models/, a name's versions, and
 * a version's files streamed from the bucket. Names and versions are checked before they become
 * part of a key, and a file is served only when it is an object directly in the version's folder
 * in the bucket: nothing here touches the server's file system.
 */
import type { Readable } from 'node:stream';
import { GetObjectCommand, ListObjectsV2Command, type ListObjectsV2CommandOutput } from '@aws-sdk/client-s3';
import type { Client } from '../../cli/client.js';
import { NotFoundError } from '../../shared/errors.js';
import {
  MODEL_NAME_RULE,
  MODEL_VERSION_RULE,
  assertLatestPointer,
  isModelName,
  isModelVersion,
  latestKey,
  versionPrefix,
} from '../../shared/model-format.js';
import { getObjectJson, s3Url, storageError } from '../../shared/s3.js';
import { quote } from '../../shared/text.js';
import { ApiError } from './http-errors.js';

/** Most names or versions one listing returns; `truncated` says when there were more. */
export const MAX_LISTED = 1000;
/** A file name inside a version's folder: no separators, no leading dot. */
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function assertModelName(name: string): void {
  if (!isModelName(name))
    throw new ApiError(400, 'BAD_REQUEST', `invalid model name ${quote(name, 100)}: ${MODEL_NAME_RULE}`);
}

/** A version: a run id, or `latest`. */
export function assertVersion(version: string): void {
  if (version !== 'latest' && !isModelVersion(version)) {
    throw new ApiError(400, 'BAD_REQUEST', `invalid version ${quote(version, 100)}: ${MODEL_VERSION_RULE}, or latest`);
  }
}

/** Folder names directly under `prefix` (ListObjectsV2 with a delimiter), at most MAX_LISTED. */
async function folders(client: Client, prefix: string): Promise<{ names: string[]; truncated: boolean }> {
  const bucket = client.config.bucket;
  const names: string[] = [];
  let token: string | undefined;
  do {
    let page: ListObjectsV2CommandOutput;
    try {
      page = await client.s3.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }),
      );
    } catch (err) {
      throw storageError(err, { bucket, prefix });
    }
    for (const p of page.CommonPrefixes ?? []) {
      if (p.Prefix) names.push(p.Prefix.slice(prefix.length, -1));
      if (names.length >= MAX_LISTED) return { names, truncated: true };
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return { names, truncated: false };
}

/** The model names that have a published version (a latest.json written by the evaluator is not needed to list them). */
export async function listModels(client: Client): Promise<{ models: string[]; truncated: boolean }> {
  const { names, truncated } = await folders(client, 'models/');
  return { models: names.filter(isModelName), truncated };
}

export interface ModelVersions {
  name: string;
  /** The version latest.json points to, or null when none is complete yet. */
  latest: string | null;
  /** Newest first (versions are run ids, which sort by time). */
  versions: string[];
  truncated: boolean;
}

export async function listVersions(client: Client, name: string): Promise<ModelVersions> {
  assertModelName(name);
  const { names, truncated } = await folders(client, `models/${name}/`);
  const versions = names.filter(isModelVersion).sort().reverse();
  const latest = await latestVersion(client, name).catch((err: unknown) => {
    if (err instanceof NotFoundError) return null;
    throw err;
  });
  if (versions.length === 0 && latest === null) {
    throw new NotFoundError(`no model named ${name} in s3://${client.config.bucket}/models/`);
  }
  return { name, latest, versions, truncated };
}

async function latestVersion(client: Client, name: string): Promise<string> {
  const key = latestKey(name);
  const pointer = await getObjectJson<unknown>(client.s3, client.config.bucket, key);
  return assertLatestPointer(pointer, name, s3Url(client.config.bucket, key)).version;
}

export interface ModelFile {
  body: Readable;
  bytes: number | undefined;
  contentType: string;
  etag: string | undefined;
}

/**
 * One object of a version's folder, streamed. `version` may be `latest`. A file name that is
 * not a plain name is refused (400); a name the folder does not hold is 404.
 */
export async function openModelFile(client: Client, name: string, version: string, file: string): Promise<ModelFile> {
  assertModelName(name);
  assertVersion(version);
  if (!FILE_NAME.test(file) || file.includes('..')) {
    throw new ApiError(
      400,
      'BAD_REQUEST',
      `invalid file name ${quote(file, 100)}: a file of the version's folder, e.g. model.json or classifier.onnx`,
    );
  }
  const v = version === 'latest' ? await latestVersion(client, name) : version;
  const key = `${versionPrefix(name, v)}${file}`;
  const bucket = client.config.bucket;
  try {
    const out = await client.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return {
      body: out.Body as Readable,
      bytes: out.ContentLength,
      contentType: file.endsWith('.json') ? 'application/json' : 'application/octet-stream',
      etag: out.ETag,
    };
  } catch (err) {
    const e = storageError(err, { bucket, key });
    if (e instanceof NotFoundError) throw new NotFoundError(`model ${name}@${v} has no file ${quote(file, 100)}`);
    throw e;
  }
}
