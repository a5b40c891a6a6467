// ava configuration, one place for all three commands:
//   npm test          every test file (what CI runs)
//   npm run test:unit the fast tests: pure logic, no Redis, S3 server, child processes or model loads
//   npm run test:e2e  the rest: real redis-server, the S3 server, worker and decoder processes, the backbone
// A new test file is a unit test unless it is listed in SLOW below.
export const SLOW = [
  'test/**/*.e2e.test.ts',
  'test/bad-requests.test.ts',
  'test/bench.test.ts',
  'test/classifier-onnx.test.ts',
  'test/cli.test.ts',
  'test/embedded-s3.test.ts',
  'test/engine.test.ts',
  'test/feature-cache-store.test.ts',
  'test/hostile-images.test.ts',
  'test/image.test.ts',
  'test/job-failure.test.ts',
  'test/keras-era.test.ts',
  'test/local-pipeline.test.ts',
  'test/local-stack.test.ts',
  'test/logreg.test.ts',
  'test/model-sources.test.ts',
  'test/onnx.test.ts',
  'test/onnx-convert.test.ts',
  'test/onnx-layers.test.ts',
  'test/onnx-user-model.test.ts',
  'test/plan-job.test.ts',
  'test/retrieval-scan.test.ts',
  'test/run-failure.test.ts',
  'test/run-record.test.ts',
  'test/shard-stop.test.ts',
  'test/run-state.test.ts',
  'test/s3-fast-get.test.ts',
  'test/s3-listing.test.ts',
  'test/terminal-output.test.ts',
  'test/tf-quiet.test.ts',
];

export const base = {
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx', '--openssl-legacy-provider'],
  // Native addons (sharp, onnxruntime-node) need each test file in its own process.
  workerThreads: false,
  timeout: '3m',
  concurrency: 2,
  environmentVariables: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
};

export default { ...base, files: ['test/**/*.test.ts'] };
