/**
 * Minimal NumPy `.npy` codec for float32 matrices (feature shards).
 *
 * Format (spec v1.0): magic `\x93NUMPY`, version bytes 1,0, a little-endian uint16
 * header length, then an ASCII Python dict literal padded with spaces and ending in
 * `\n` so that the data starts on a 64-byte boundary, then the raw C-order data.
 *
 * The encoder reproduces `numpy.save` byte for byte (including numpy's spare spaces
 * after the dict that let the first axis grow in place), so shards written here and by
 * Python are interchangeable and content hashes are stable.
 */
import { endianness } from 'node:os';
import { BadRequestError, DatasetError } from './errors.js';

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const ALIGN = 64;
/** numpy leaves room for the growth axis to reach this many digits (numpy >= 1.24). */
const GROWTH_AXIS_MAX_DIGITS = 21;
const LITTLE_ENDIAN_HOST = endianness() === 'LE';

/** A decoded array: data is always a fresh, aligned Float32Array in C order. */
export interface NpyArray {
  data: Float32Array;
  shape: number[];
}

function shapeProduct(shape: readonly number[]): number {
  let size = 1;
  for (const dim of shape) size *= dim;
  return size;
}

/** Python's repr of a tuple of ints: `()`, `(5,)`, `(2, 3)`. */
function pythonTuple(shape: readonly number[]): string {
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(', ')})`;
}

/**
 * Encodes a float32 array as `.npy` v1.0 (`<f4`, C order). Deterministic: the same
 * data and shape always give the same bytes, identical to `numpy.save`.
 * Throws BadRequestError if the shape is invalid or does not match `data.length`.
 */
export function encodeNpy(data: Float32Array, shape: readonly number[]): Buffer {
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new BadRequestError(
        `npy: shape ${JSON.stringify(shape)} has an invalid dimension ${dim}; dimensions must be non-negative integers`,
      );
    }
  }
  const size = shapeProduct(shape);
  if (size !== data.length) {
    throw new BadRequestError(`npy: shape ${JSON.stringify(shape)} holds ${size} values but data has ${data.length}`);
  }

  let dict = `{'descr': '<f4', 'fortran_order': False, 'shape': ${pythonTuple(shape)}, }`;
  if (shape.length > 0) dict += ' '.repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(shape[0]).length));
  // +1 for the trailing newline; numpy always pads by 1..64 spaces, never 0.
  const withNewline = dict.length + 1;
  const pad = ALIGN - ((MAGIC.length + 2 + 2 + withNewline) % ALIGN);
  const headerLength = withNewline + pad;
  if (headerLength > 0xffff) throw new BadRequestError(`npy: header too long (${headerLength} bytes) for format v1.0`);
  const dataOffset = MAGIC.length + 4 + headerLength;

  const out = Buffer.alloc(dataOffset + data.length * 4);
  MAGIC.copy(out, 0);
  out[6] = 1;
  out[7] = 0;
  out.writeUInt16LE(headerLength, 8);
  out.write(dict, 10, 'latin1');
  out.fill(0x20, 10 + dict.length, dataOffset - 1);
  out[dataOffset - 1] = 0x0a;

  if (LITTLE_ENDIAN_HOST) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), dataOffset);
  } else {
    for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], dataOffset + i * 4);
  }
  return out;
}

interface ParsedHeader {
  descr: string;
  fortranOrder: boolean;
  shape: number[];
}

function parseHeader(text: string): ParsedHeader {
  // The header is a Python dict literal; we only need three keys, so targeted regexes
  // are safer than a general literal parser (and reject anything surprising).
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(text);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(text);
  if (!descr && /'descr'\s*:\s*\[/.test(text)) {
    throw new DatasetError("npy: unsupported dtype (structured array); expected '<f4' or '<f8'");
  }
  if (!descr || !fortran || !shape) {
    throw new DatasetError(`npy: header dict lacks descr, fortran_order or shape: ${JSON.stringify(text.trim())}`);
  }
  const parts = shape[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const dims = parts.map((p) => {
    if (!/^\d+$/.test(p)) throw new DatasetError(`npy: shape (${shape[1]}) has a non-integer dimension '${p}'`);
    return Number(p);
  });
  return { descr: descr[1], fortranOrder: fortran[1] === 'True', shape: dims };
}

/**
 * Decodes a `.npy` file holding `<f4` or `<f8` (converted to float32) in C order.
 * Format versions 1.0, 2.0 and 3.0 are read. The returned data is always a copy, so
 * inputs at any byte offset (e.g. slices of a larger Buffer) are fine.
 * Throws DatasetError naming what is wrong: bad magic, unsupported version or dtype,
 * Fortran order, or a data size that does not match the shape.
 */
export function decodeNpy(bytes: Uint8Array): NpyArray {
  if (bytes.length < 10 || !MAGIC.equals(Buffer.from(bytes.buffer, bytes.byteOffset, 6))) {
    throw new DatasetError('npy: bad magic; not a NumPy .npy file');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  let headerLength: number;
  let headerStart: number;
  if (major === 1) {
    headerLength = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new DatasetError('npy: truncated header');
    headerLength = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new DatasetError(`npy: unsupported format version ${major}.${bytes[7]}`);
  }
  const dataOffset = headerStart + headerLength;
  if (dataOffset > bytes.length)
    throw new DatasetError(`npy: truncated header (needs ${dataOffset} bytes, file has ${bytes.length})`);
  const headerText = Buffer.from(bytes.buffer, bytes.byteOffset + headerStart, headerLength).toString(
    major === 3 ? 'utf8' : 'latin1',
  );
  const header = parseHeader(headerText);

  if (header.fortranOrder)
    throw new DatasetError('npy: fortran_order=True is not supported; save the array in C order');
  let itemSize: number;
  if (header.descr === '<f4') itemSize = 4;
  else if (header.descr === '<f8') itemSize = 8;
  else throw new DatasetError(`npy: unsupported dtype '${header.descr}'; expected '<f4' or '<f8'`);

  const count = shapeProduct(header.shape);
  const expected = count * itemSize;
  const actual = bytes.length - dataOffset;
  if (actual !== expected) {
    throw new DatasetError(
      `npy: data size mismatch: shape ${pythonTuple(header.shape)} of ${header.descr} needs ${expected} bytes, file has ${actual}`,
    );
  }

  const data = new Float32Array(count);
  if (itemSize === 4 && LITTLE_ENDIAN_HOST) {
    // Byte copy into the fresh, aligned buffer: valid whatever the input's byteOffset.
    new Uint8Array(data.buffer).set(bytes.subarray(dataOffset, dataOffset + expected));
  } else if (itemSize === 4) {
    for (let i = 0; i < count; i++) data[i] = view.getFloat32(dataOffset + i * 4, true);
  } else {
    for (let i = 0; i < count; i++) data[i] = view.getFloat64(dataOffset + i * 8, true);
  }
  return { data, shape: header.shape };
}
