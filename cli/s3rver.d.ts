// The parts of s3rver@3.7 (plain JavaScript, no types of its own) that cli/embedded-s3.ts uses.

declare module 's3rver' {
  import type { IncomingMessage, ServerResponse } from 'node:http';

  export interface S3rverOptions {
    address?: string;
    port?: number;
    directory: string;
    silent?: boolean;
    /** false: never read a bucket name out of the Host header. */
    vhostBuckets?: boolean;
    configureBuckets?: { name: string }[];
  }

  export default class S3rver {
    constructor(options: S3rverOptions);
    /** The store s3rver's controllers use (`ctx.app.store`). */
    store: unknown;
    /** Koa's context prototype; `context.store` is what `ctx.store` reads. */
    readonly context: { store: unknown };
    configureBuckets(): Promise<void>;
    /** Koa's request handler. */
    callback(): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  }
}

declare module 's3rver/lib/stores/filesystem.js' {
  import type { Readable } from 'node:stream';

  export type ObjectMetadata = Record<string, unknown>;

  export interface StoredObject {
    bucket: string;
    key: string;
    content: Buffer | Readable;
    metadata: ObjectMetadata;
  }

  /** An S3Object as getObject returns it: the data file opened (null for an unsatisfiable range). */
  export interface ReadObject {
    content: Readable | null;
    metadata: ObjectMetadata;
  }

  /** One `<Part>` of a CompleteMultipartUpload body, as s3rver's controller passes it (quotes removed). */
  export interface CompletedPart {
    number: number;
    etag: string;
  }

  export default class FilesystemStore {
    constructor(rootDirectory: string);
    /** `<root>/<bucket>/<key dirs>/<last segment>._S3rver_<resource>` */
    getResourcePath(bucket: string, key?: string, resource?: string): string;
    putMetadata(bucket: string, key: string, metadata: Record<string, unknown>, md5?: string): Promise<void>;
    /** One page of a listing: walks the bucket's folders, then reads each key's metadata. */
    listObjects(bucket: string, options: Record<string, unknown>): Promise<unknown>;
    putObject(object: StoredObject): Promise<{ size: number; md5: string }>;
    getObject(bucket: string, key: string, options?: { start?: number; end?: number }): Promise<ReadObject | null>;
    copyObject(
      srcBucket: string,
      srcKey: string,
      destBucket: string,
      destKey: string,
      replacementMetadata: ObjectMetadata | null,
    ): Promise<ObjectMetadata>;
    deleteObject(bucket: string, key: string): Promise<void>;
    putObjectMultipart(
      bucket: string,
      uploadId: string,
      parts: readonly CompletedPart[],
    ): Promise<{ size: number; md5: string }>;
    putPart(
      bucket: string,
      uploadId: string,
      partNumber: number | string,
      content: Readable,
    ): Promise<{ size: number; md5: string }>;
  }
}

declare module 's3rver/lib/models/account.js' {
  const AWSAccount: {
    DUMMY_ACCOUNT: { createKeyPair(accessKeyId: string, secretAccessKey: string): void };
  };
  export default AWSAccount;
}

declare module 's3rver/lib/models/object.js' {
  const S3Object: {
    /** The request headers s3rver stores with an object (besides x-amz-meta-*). */
    readonly ALLOWED_METADATA: readonly string[];
  };
  export default S3Object;
}

declare module 's3rver/lib/models/error.js' {
  /** An error s3rver's handler answers as S3 does: this code's status and an XML body. */
  export default class S3Error extends Error {
    constructor(code: string, message: string, detail?: Record<string, string | number>);
    readonly code: string;
    readonly status: number;
  }
}
