/**
 * Which features a run extracts. Declared here because the client (CLI), the planner and the
 * extractor all read it, and the published model records it so a user can reproduce features.
 */
export type FeatureSpec =
  /** The lesson's baseline: the image resized to size×size, pixels/255 flattened. */
  | { kind: 'raw-pixels'; size: number }
  /** The backbone that ships with the install (MobileNetV2 in nsfwjs@4.4.0); node defaults to the measured best. */
  | { kind: 'builtin'; id: 'mobilenet_v2_mid'; node?: string }
  /** A user's TF.js graph or layers model: local path or s3:// URL of model.json, plus the node to pool. */
  | { kind: 'tfjs'; model: string; node: string; inputSize?: number; inputRange?: '0,1' | '-1,1' | '0,255' };

export const DEFAULT_FEATURES: FeatureSpec = { kind: 'builtin', id: 'mobilenet_v2_mid' };
export const RAW_PIXELS: FeatureSpec = { kind: 'raw-pixels', size: 32 };

/** A short human label for tables and logs. */
export function describeFeatures(spec: FeatureSpec): string {
  switch (spec.kind) {
    case 'raw-pixels':
      return `raw pixels ${spec.size}x${spec.size}`;
    case 'builtin':
      return `${spec.id}${spec.node ? `@${spec.node}` : ''}`;
    case 'tfjs':
      return `${spec.model}@${spec.node}`;
  }
}
