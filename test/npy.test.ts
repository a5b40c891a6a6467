import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeNpy, encodeNpy } from '../shared/npy.js';
import { BadRequestError, DatasetError } from '../shared/errors.js';

const hasNumpy = spawnSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0;

function headerLength(buf: Buffer): number {
  return 10 + buf.readUInt16LE(8);
}

test('golden bytes for a 1×2 float32 array, written by hand from the spec', (t) => {
  const dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }"; // 59 chars
  const expected = Buffer.concat([
    Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00]), // \x93NUMPY v1.0
    Buffer.from([0x76, 0x00]), // header length 118 = 128 - 10
    Buffer.from(dict, 'latin1'),
    Buffer.from(' '.repeat(58), 'latin1'), // 10 + 59 + 58 + 1 = 128 = 2 × 64
    Buffer.from('\n', 'latin1'),
    Buffer.from([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0]), // 1.0f, -2.0f little-endian
  ]);
  const actual = encodeNpy(new Float32Array([1, -2]), [1, 2]);
  t.is(actual.toString('hex'), expected.toString('hex'));
});

test('header is 64-byte aligned and ends with a newline for many shapes', (t) => {
  for (const shape of [[0, 816], [3], [1, 1], [2000, 1792], [7, 3], [123456789, 0], [2, 3, 4]]) {
    const size = shape.reduce((a, b) => a * b, 1);
    const buf = encodeNpy(new Float32Array(size), shape);
    const h = headerLength(buf);
    t.is(h % 64, 0, `shape ${shape}`);
    t.is(buf[h - 1], 0x0a, `shape ${shape}`);
    t.is(buf.length, h + size * 4);
  }
});

test('round trips 2-D, 1-D and empty shapes', (t) => {
  const cases: Array<[Float32Array, number[]]> = [
    [Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 3), [3, 4]],
    [new Float32Array([1.5, -0, 3.4e38, Number.NaN, -Infinity]), [5]],
    [new Float32Array(0), [0, 816]],
  ];
  for (const [data, shape] of cases) {
    const out = decodeNpy(encodeNpy(data, shape));
    t.deepEqual(out.shape, shape);
    t.deepEqual(Buffer.from(out.data.buffer), Buffer.from(data.buffer));
  }
});

test('encoding is deterministic and does not depend on the input view offset', (t) => {
  const backing = new Float32Array([9, 1, 2, 3, 4, 9]);
  const view = backing.subarray(1, 5);
  const a = encodeNpy(view, [2, 2]);
  const b = encodeNpy(new Float32Array([1, 2, 3, 4]), [2, 2]);
  t.true(a.equals(b));
});

test('decodes from a buffer at an odd byteOffset', (t) => {
  const npy = encodeNpy(new Float32Array([1.25, -7, 3]), [3]);
  const backing = new Uint8Array(npy.length + 3);
  backing.set(npy, 1);
  const out = decodeNpy(backing.subarray(1, 1 + npy.length));
  t.deepEqual(Array.from(out.data), [1.25, -7, 3]);
  t.is(out.data.byteOffset, 0);
});

test('encode rejects a shape that does not match the data', (t) => {
  const err = t.throws(() => encodeNpy(new Float32Array(5), [2, 3]), { instanceOf: BadRequestError });
  t.regex(err.message, /6 values but data has 5/);
  t.throws(() => encodeNpy(new Float32Array(0), [-1, 0]), {
    instanceOf: BadRequestError,
    message: /invalid dimension/,
  });
});

function withHeader(dict: string, payload: Buffer): Buffer {
  const padded = `${dict + ' '.repeat(64 - ((10 + dict.length + 1) % 64))}\n`;
  const len = Buffer.alloc(2);
  len.writeUInt16LE(padded.length);
  return Buffer.concat([
    Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]),
    len,
    Buffer.from(padded, 'latin1'),
    payload,
  ]);
}

test('decode converts <f8 to float32', (t) => {
  const f64 = new Float64Array([0.1, 2, -3.5]);
  const buf = withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", Buffer.from(f64.buffer));
  const out = decodeNpy(buf);
  t.deepEqual(out.shape, [3]);
  t.deepEqual(Array.from(out.data), Array.from(Float32Array.from(f64)));
});

test('decode errors name the problem', (t) => {
  t.throws(() => decodeNpy(Buffer.from('PK\x03\x04 not an npy file')), {
    instanceOf: DatasetError,
    message: /bad magic/,
  });
  t.throws(() => decodeNpy(withHeader("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(4))), {
    instanceOf: DatasetError,
    message: /unsupported dtype '<i4'/,
  });
  t.throws(
    () => decodeNpy(withHeader("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(4))),
    {
      message: /unsupported dtype \(structured array\)/,
    },
  );
  t.throws(() => decodeNpy(withHeader("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(4))), {
    message: /unsupported dtype '>f4'/,
  });
  t.throws(
    () => decodeNpy(withHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", Buffer.alloc(16))),
    {
      message: /fortran_order/,
    },
  );
  t.throws(
    () => decodeNpy(withHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", Buffer.alloc(12))),
    {
      message: /size mismatch.*needs 16 bytes, file has 12/,
    },
  );
  const good = encodeNpy(new Float32Array(4), [2, 2]);
  t.throws(() => decodeNpy(good.subarray(0, 9)), { message: /bad magic/ });
  const badVersion = Buffer.from(good);
  badVersion[6] = 9;
  t.throws(() => decodeNpy(badVersion), { message: /unsupported format version 9\.0/ });
});

(hasNumpy ? test : test.skip)('interoperates with numpy both ways, byte-identical to numpy.save', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'deepfeat-npy-'));
  try {
    const ours = join(dir, 'ours.npy');
    const theirs = join(dir, 'theirs.npy');
    const data = Float32Array.from({ length: 15 }, (_, i) => Math.fround(i / 7 - 1));
    writeFileSync(ours, encodeNpy(data, [5, 3]));
    writeFileSync(join(dir, 'empty.npy'), encodeNpy(new Float32Array(0), [0, 816]));
    const script = `
import numpy as np, sys, io
d = sys.argv[1]
a = np.load(d + '/ours.npy')
assert a.dtype == np.float32 and a.shape == (5, 3), (a.dtype, a.shape)
assert np.array_equal(a, (np.arange(15, dtype=np.float64) / 7 - 1).astype(np.float32).reshape(5, 3))
e = np.load(d + '/empty.npy')
assert e.shape == (0, 816) and e.dtype == np.float32
for name, arr in [('same', a), ('empty', e), ('vec', np.float32([1.5, -2, 3]))]:
    b = io.BytesIO(); np.save(b, arr); open(d + '/np_' + name + '.npy', 'wb').write(b.getvalue())
np.save(d + '/theirs.npy', np.arange(6, dtype='<f4').reshape(2, 3) * 0.25)
np.save(d + '/theirs64.npy', np.arange(4, dtype='<f8') / 3)
`;
    const res = spawnSync('python3', ['-c', script, dir], { encoding: 'utf8' });
    t.is(res.status, 0, res.stderr);

    const back = decodeNpy(readFileSync(theirs));
    t.deepEqual(back.shape, [2, 3]);
    t.deepEqual(Array.from(back.data), [0, 0.25, 0.5, 0.75, 1, 1.25]);
    const back64 = decodeNpy(readFileSync(join(dir, 'theirs64.npy')));
    t.deepEqual(Array.from(back64.data), Array.from(Float32Array.from([0, 1 / 3, 2 / 3, 1])));

    // numpy.save output and ours are the same bytes.
    t.true(readFileSync(join(dir, 'np_same.npy')).equals(readFileSync(ours)));
    t.true(readFileSync(join(dir, 'np_empty.npy')).equals(encodeNpy(new Float32Array(0), [0, 816])));
    t.true(readFileSync(join(dir, 'np_vec.npy')).equals(encodeNpy(new Float32Array([1.5, -2, 3]), [3])));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
