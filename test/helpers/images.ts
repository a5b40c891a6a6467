/** Test images made by hand: shapes sharp cannot make itself, or pictures whose orientation shows. */

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
