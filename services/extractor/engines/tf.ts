/**
 * TensorFlow.js, as deepfeat's code imports it (`import { tf } from '…/engines/tf.js'`; type-only
 * imports may name the package itself).
 *
 * Decision: TensorFlow.js runs in production mode (its `PROD` flag), which only turns off its
 * console warnings. They go to a worker's stderr as unstructured lines beside its JSON log, and the
 * one every process printed — "Hi, looks like you are running TensorFlow.js in Node.js … install our
 * node backend" — named a package deepfeat already tries first (tfjs-backend.ts; the backend in use
 * is logged, and `deepfeat status` shows it per run). Errors are thrown as before.
 */
import * as tfjs from '@tensorflow/tfjs';

tfjs.env().set('PROD', true);

export * as tf from '@tensorflow/tfjs';
