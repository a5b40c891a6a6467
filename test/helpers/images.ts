/** Test images made by hand: shapes sharp cannot make itself, or pictures whose orientation shows. */
import { crc32 } from 'node:zlib';

/**
 * A minimal animated GIF (two frames, 2-colour palette) written byte by byte, because sharp 0.33
 * cannot create a multi-frame image from scratch. LZW with a clear code before every pair of
 * pixels keeps every code 3 bits wide.
 */
export function twoFrameGif(width: number, height: number, frames: Array<[number, number, number]>): Buffer {
  const out: number[] = [];
  const u16 = (v: number) => out.push(v & 0xff, v >> 8);
  out.push(...Buffer.from('GIF89a'));
  u16(width);
  u16(height);
  out.push(0xf0, 0, 0); // global colour table, 2 entries (size bits 0 → 2 colours)
  out.push(0, 0, 0, 0, 0, 0); // placeholder palette, each frame has its own
  out.push(0x21, 0xff, 0x0b, ...Buffer.from('NETSCAPE2.0'), 0x03, 0x01, 0x00, 0x00, 0x00); // loop forever
  for (const [r, g, b] of frames) {
    out.push(0x21, 0xf9, 0x04, 0x00, 10, 0, 0, 0); // graphic control: 100 ms delay
    out.push(0x2c);
    u16(0);
    u16(0);
    u16(width);
    u16(height);
    out.push(0x80); // local colour table of 2 entries
    out.push(r, g, b, 0, 0, 0);
    out.push(2); // LZW minimum code size
    const clear = 4;
    const eoi = 5;
    const codes: number[] = [];
    const n = width * height;
    for (let i = 0; i < n; i += 2) {
      codes.push(clear, 0);
      if (i + 1 < n) codes.push(0);
    }
    codes.push(eoi);
    const data: number[] = [];
    let acc = 0;
    let bits = 0;
    for (const c of codes) {
      acc |= c << bits;
      bits += 3;
      while (bits >= 8) {
        data.push(acc & 0xff);
        acc >>= 8;
        bits -= 8;
      }
    }
    if (bits > 0) data.push(acc & 0xff);
    for (let i = 0; i < data.length; i += 255) {
      const block = data.slice(i, i + 255);
      out.push(block.length, ...block);
    }
    out.push(0);
  }
  out.push(0x3b);
  return Buffer.from(out);
}

/** An asymmetric picture (gradient plus a red block in one corner) so rotations are visible. */
export function asymmetricRaw(width: number, height: number): Buffer {
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      const corner = x < width / 3 && y < height / 3;
      px[i] = corner ? 255 : Math.round((255 * x) / width);
      px[i + 1] = corner ? 0 : Math.round((255 * y) / height);
      px[i + 2] = corner ? 0 : 128;
    }
  }
  return px;
}

// ───────────── hostile and unusual files, crafted byte by byte (no encoder for them here) ─────────────

/** One PNG chunk: length, type, data, CRC over type and data. */
export function pngChunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0);
  return Buffer.concat([head, data, crc]);
}

/** `png` with `chunks` inserted right after its IHDR chunk (which ends at byte 33). */
export function withPngChunks(png: Uint8Array, chunks: readonly Uint8Array[]): Buffer {
  return Buffer.concat([png.subarray(0, 33), ...chunks, png.subarray(33)]);
}

/** `png` whose IHDR declares `width` × `height` (CRC fixed), pixel data unchanged: a header that lies. */
export function pngDeclaring(png: Uint8Array, width: number, height: number): Buffer {
  const out = Buffer.from(png);
  out.writeUInt32BE(width, 16);
  out.writeUInt32BE(height, 20);
  out.writeUInt32BE(crc32(out.subarray(12, 29)) >>> 0, 29);
  return out;
}

/** `jpeg` whose first SOF segment declares `width` × `height`: a tiny file that claims to be huge. */
export function jpegDeclaring(jpeg: Uint8Array, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  let o = 2;
  while (o + 9 < out.length) {
    if (out[o] !== 0xff) throw new Error(`jpegDeclaring: no marker at ${o}`);
    const marker = out[o + 1]!;
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      out.writeUInt16BE(height, o + 5);
      out.writeUInt16BE(width, o + 7);
      return out;
    }
    o += 2 + out.readUInt16BE(o + 2);
  }
  throw new Error('jpegDeclaring: no SOF segment');
}

/** `jpeg` with `count` APP1 (EXIF) segments of `size` bytes each after SOI: an EXIF bomb. */
export function jpegWithExifSegments(jpeg: Uint8Array, count: number, size = 65_533): Buffer {
  const seg = Buffer.alloc(4 + size);
  seg.writeUInt16BE(0xffe1, 0);
  seg.writeUInt16BE(size + 2, 2);
  // A TIFF header whose IFD0 claims 65535 entries, most of them beyond the segment.
  seg.write('Exif\0\0II*\0', 4, 'latin1');
  seg.writeUInt32LE(8, 14);
  seg.writeUInt16LE(0xffff, 18);
  return Buffer.concat([jpeg.subarray(0, 2), ...Array.from({ length: count }, () => seg), jpeg.subarray(2)]);
}

/** A minimal GIF: a `canvasW` × `canvasH` screen whose one frame declares `frameW` × `frameH`. */
export function gifWithFrame(canvasW: number, canvasH: number, frameW: number, frameH: number): Buffer {
  const u16 = (v: number) => [v & 0xff, v >> 8];
  return Buffer.from([
    ...Buffer.from('GIF89a'),
    ...u16(canvasW),
    ...u16(canvasH),
    0xf0,
    0,
    0,
    0,
    0,
    0,
    255,
    255,
    255, // 2-colour global table
    0x2c,
    ...u16(0),
    ...u16(0),
    ...u16(frameW),
    ...u16(frameH),
    0x00,
    2,
    1,
    0x44,
    0, // LZW: clear, one pixel, end (the rest of the frame is missing)
    0x3b,
  ]);
}

type TiffEntry = [tag: number, type: 3 | 4, value: number];

/**
 * A little-endian TIFF with one directory per page, each 8-bit RGB, uncompressed, one strip
 * (or one tile when `tile` is given) of `data` bytes. Pages may declare any size.
 */
export function tiffPages(
  pages: ReadonlyArray<{ width: number; height: number; data: Uint8Array; tile?: number }>,
): Buffer {
  const parts: Buffer[] = [];
  let offset = 8;
  const header = Buffer.alloc(8);
  header.write('II', 0, 'latin1');
  header.writeUInt16LE(42, 2);
  parts.push(header);
  const dirs: Array<{ at: number; buf: Buffer }> = [];
  for (const p of pages) {
    const dataAt = offset;
    const data = Buffer.from(p.data);
    parts.push(data);
    offset += data.length + (data.length % 2); // directories start on a word boundary
    if (data.length % 2) parts.push(Buffer.alloc(1));
    const bpsAt = offset; // BitsPerSample for 3 samples does not fit in the entry: 3 shorts here
    const bps = Buffer.alloc(6);
    bps.writeUInt16LE(8, 0);
    bps.writeUInt16LE(8, 2);
    bps.writeUInt16LE(8, 4);
    parts.push(bps);
    offset += 6;
    const entries: TiffEntry[] = [
      [256, 4, p.width],
      [257, 4, p.height],
      [258, 3, bpsAt], // count 3: value is an offset
      [259, 3, 1],
      [262, 3, 2],
      [277, 3, 3],
      [284, 3, 1],
    ];
    if (p.tile === undefined) entries.push([273, 4, dataAt], [278, 4, p.height], [279, 4, data.length]);
    else entries.push([322, 4, p.tile], [323, 4, p.tile], [324, 4, dataAt], [325, 4, data.length]);
    entries.sort((a, b) => a[0] - b[0]);
    const dir = Buffer.alloc(2 + entries.length * 12 + 4);
    dir.writeUInt16LE(entries.length, 0);
    entries.forEach(([tag, type, value], i) => {
      const o = 2 + i * 12;
      dir.writeUInt16LE(tag, o);
      dir.writeUInt16LE(type, o + 2);
      dir.writeUInt32LE(tag === 258 ? 3 : 1, o + 4);
      if (type === 3 && tag !== 258) dir.writeUInt16LE(value, o + 8);
      else dir.writeUInt32LE(value, o + 8);
    });
    dirs.push({ at: offset, buf: dir });
    parts.push(dir);
    offset += dir.length;
  }
  header.writeUInt32LE(dirs[0]!.at, 4);
  for (let i = 0; i + 1 < dirs.length; i++) dirs[i]!.buf.writeUInt32LE(dirs[i + 1]!.at, dirs[i]!.buf.length - 4);
  return Buffer.concat(parts);
}

/**
 * A one-page TIFF laid out as cameras and scanners write it: header, directory, then the pixels
 * (8-bit RGB, uncompressed, one strip of `data`), in either byte order, classic or BigTIFF. Cut
 * anywhere in `data`, its directory is whole but points past the end of the file.
 */
export function tiffDirectoryFirst(
  width: number,
  height: number,
  data: Uint8Array,
  { order = 'II', big = false }: { order?: 'II' | 'MM'; big?: boolean } = {},
): Buffer {
  const le = order === 'II';
  const entries: TiffEntry[] = [
    [256, 4, width],
    [257, 4, height],
    [258, 3, 0], // BitsPerSample, count 3: after the directory (classic) or in the entry (BigTIFF)
    [259, 3, 1],
    [262, 3, 2],
    [273, 4, 0], // StripOffsets: after the BitsPerSample values
    [277, 3, 3],
    [278, 4, height],
    [279, 4, data.length],
    [284, 3, 1],
  ];
  const [headerSize, countSize, entrySize, word] = big ? [16, 8, 20, 8] : [8, 2, 12, 4];
  const bpsAt = headerSize + countSize + entries.length * entrySize + word;
  const dataAt = bpsAt + 6;
  const out = Buffer.alloc(dataAt + data.length);
  const u16 = (v: number, o: number) => (le ? out.writeUInt16LE(v, o) : out.writeUInt16BE(v, o));
  const u32 = (v: number, o: number) => (le ? out.writeUInt32LE(v, o) : out.writeUInt32BE(v, o));
  const u64 = (v: number, o: number) => (le ? out.writeBigUInt64LE(BigInt(v), o) : out.writeBigUInt64BE(BigInt(v), o));
  const offset = big ? u64 : u32;
  out.write(order, 0, 'latin1');
  u16(big ? 43 : 42, 2);
  if (big) {
    u16(8, 4); // offset size
    u64(headerSize, 8);
    u64(entries.length, headerSize);
  } else {
    u32(headerSize, 4);
    u16(entries.length, headerSize);
  }
  entries.forEach(([tag, type, value], i) => {
    const o = headerSize + countSize + i * entrySize;
    u16(tag, o);
    u16(type, o + 2);
    offset(tag === 258 ? 3 : 1, o + 4);
    const v = tag === 258 ? bpsAt : tag === 273 ? dataAt : value;
    const at = o + 4 + word;
    if (tag === 258 && big)
      for (let k = 0; k < 3; k++) u16(8, at + k * 2); // 6 bytes fit in the entry
    else if (tag === 258) offset(v, at);
    else if (type === 3) u16(v, at);
    else u32(v, at);
  });
  for (let i = 0; i < 3; i++) u16(8, bpsAt + i * 2);
  out.set(data, dataAt);
  return out;
}

/** A Windows icon holding one PNG (a complete, valid ICO file). */
export function icoWithPng(png: Uint8Array, size: number): Buffer {
  const dir = Buffer.alloc(6 + 16);
  dir.writeUInt16LE(0, 0);
  dir.writeUInt16LE(1, 2); // icon
  dir.writeUInt16LE(1, 4); // one image
  dir[6] = size % 256;
  dir[7] = size % 256;
  dir.writeUInt16LE(1, 10); // planes
  dir.writeUInt16LE(32, 12); // bits per pixel
  dir.writeUInt32LE(png.length, 14);
  dir.writeUInt32LE(dir.length, 18);
  return Buffer.concat([dir, png]);
}

/** A complete, valid Photoshop file: 8-bit RGB, no layers, raw image data of one colour. */
export function psd(width: number, height: number, rgb: [number, number, number]): Buffer {
  const head = Buffer.alloc(26);
  head.write('8BPS', 0, 'latin1');
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(3, 12); // channels
  head.writeUInt32BE(height, 14);
  head.writeUInt32BE(width, 18);
  head.writeUInt16BE(8, 22); // depth
  head.writeUInt16BE(3, 24); // RGB
  const sections = Buffer.alloc(12); // colour mode data, image resources, layer and mask info: all empty
  const data = Buffer.concat([Buffer.alloc(2), ...rgb.map((v) => Buffer.alloc(width * height, v))]); // compression 0 = raw
  return Buffer.concat([head, sections, data]);
}

/** An ISO media file's first box: `ftyp` with a major brand and compatible brands (HEIC, AVIF, JPEG XL...). */
export function ftyp(major: string, compatible: readonly string[], rest: Uint8Array = new Uint8Array(0)): Buffer {
  const box = Buffer.alloc(16 + compatible.length * 4);
  box.writeUInt32BE(box.length, 0);
  box.write('ftyp', 4, 'latin1');
  box.write(major, 8, 'latin1');
  for (const [i, b] of compatible.entries()) box.write(b, 16 + i * 4, 'latin1');
  return Buffer.concat([box, rest]);
}

/** The signature box and `ftyp` of a JP2 file (JPEG 2000), followed by `rest`. */
export function jp2Header(rest: Uint8Array = Buffer.alloc(64)): Buffer {
  const sig = Buffer.from([0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20, 0x0d, 0x0a, 0x87, 0x0a]);
  return Buffer.concat([sig, ftyp('jp2 ', ['jp2 ']), rest]);
}

/** A 2×2 24-bit BMP (a complete, valid file). */
export function bmp2x2(): Buffer {
  const b = Buffer.alloc(54 + 16);
  b.write('BM', 0, 'latin1');
  b.writeUInt32LE(b.length, 2);
  b.writeUInt32LE(54, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(2, 18);
  b.writeInt32LE(2, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(24, 28);
  b.writeUInt32LE(16, 34);
  return b;
}

/** An SVG document of `width` × `height` with `body` inside. */
export function svgDoc(width: number, height: number, body: string, prolog = ''): Buffer {
  return Buffer.from(
    `${prolog}<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="${width}" height="${height}">${body}</svg>`,
  );
}

/** An `<image>` drawing `bytes` (as a base64 data: URI of type `mime`) over the whole `size`×`size` square. */
export function svgImage(bytes: Uint8Array, mime: string, size: number, attr = 'href'): string {
  return `<image x="0" y="0" width="${size}" height="${size}" ${attr}="data:${mime};base64,${Buffer.from(bytes).toString('base64')}"/>`;
}

/**
 * An SVG that takes the renderer a long time: `shapes` large rectangles, each blurred by a
 * filter (a few hundred bytes of filter work per shape, seconds per hundred shapes at 224 px).
 */
export function svgFilterBomb(shapes: number): Buffer {
  const rects = Array.from(
    { length: shapes },
    (_, i) => `<rect x="${i % 100}" y="${i % 50}" width="900" height="900" filter="url(#f)"/>`,
  );
  return svgDoc(
    1000,
    1000,
    `<defs><filter id="f"><feGaussianBlur stdDeviation="50"/></filter></defs>${rects.join('')}`,
  );
}

/**
 * A 1 KB SVG that takes the renderer minutes at any output size: `<use>` references fanned out
 * `levels` deep (fan^levels blurred rectangles, within librsvg's own reference limits).
 */
export function svgUseBomb(levels: number, fan = 10): Buffer {
  let defs = '<g id="g0"><rect width="900" height="900" filter="url(#f)"/></g>';
  for (let l = 1; l <= levels; l++) {
    defs += `<g id="g${l}">${Array.from({ length: fan }, (_, i) => `<use href="#g${l - 1}" x="${i}"/>`).join('')}</g>`;
  }
  return svgDoc(
    1000,
    1000,
    `<defs><filter id="f"><feGaussianBlur stdDeviation="50"/></filter>${defs}</defs><use href="#g${levels}"/>`,
  );
}
