// Builds deepfeat's JPEG decoder (deepfeat_jpeg.c) with node-gyp against the host's libjpeg-turbo.
// Run by `npm ci` / `npm install` (the root package's postinstall) and by `npm run build:native`.
// It never fails the install: without a C compiler, Python or libjpeg-turbo's headers
// (Debian: g++ make python3 libjpeg62-turbo-dev), deepfeat decodes JPEGs through sharp, with the
// same pixels and more CPU per image (README "Performance"). One line says which.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const strict = process.argv.includes('--strict'); // npm run build:native: fail loudly
// npm hands lifecycle scripts its bundled node-gyp (npm_config_node_gyp) and the configured
// headers folder (npm_config_nodedir); run by hand, use npm's own copy beside this node.
const nodeGyp =
  process.env.npm_config_node_gyp ??
  join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const args = [nodeGyp, 'rebuild', '--directory', here];
if (process.env.npm_config_nodedir) args.push(`--nodedir=${process.env.npm_config_nodedir}`);

const done = existsSync(nodeGyp)
  ? spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  : undefined;
const mismatch = done?.status === 0 ? await differsFromSharp() : undefined;
if (done?.status === 0 && !mismatch) {
  console.log('deepfeat: built the native JPEG decoder (native/jpeg/build/Release/deepfeat_jpeg.node)');
} else if (mismatch) {
  rmSync(join(here, 'build'), { recursive: true, force: true });
  console.warn(
    `deepfeat: the native JPEG decoder was built but this host's libjpeg does not decode as sharp does (${mismatch}); ` +
      'it is removed, and JPEGs are decoded through sharp',
  );
  if (strict) process.exit(1);
} else {
  rmSync(join(here, 'build'), { recursive: true, force: true });
  const lines = done ? `${done.stderr}\n${done.stdout}`.split('\n').map((l) => l.trim()) : [];
  // The compiler's own error (a missing jpeglib.h), else node-gyp's reason, else its exit.
  const why = !done
    ? `node-gyp not found at ${nodeGyp}`
    : lines.includes('gyp WARN install got an error, rolling back install')
      ? "node-gyp could not download Node.js's headers; point it at a local copy: npm config set nodedir /usr"
      : (lines.find((l) => /cannot find -l/.test(l)) ??
        lines.find((l) => /(fatal )?error:/.test(l) && !l.startsWith('gyp') && !l.startsWith('collect2')) ??
        lines.find((l) => l.startsWith('gyp ERR! stack Error:'))?.slice('gyp ERR! stack '.length) ??
        `node-gyp exited with ${done.status}`);
  console.warn(
    `deepfeat: native JPEG decoder not built (${why.slice(0, 200)}); JPEGs are decoded through sharp ` +
      '(same pixels, more CPU). To build it: install a C compiler, make, python3 and libjpeg-turbo headers ' +
      '(Debian: apt-get install g++ make python3 libjpeg62-turbo-dev), then npm run build:native',
  );
  if (strict) process.exit(1);
}

/**
 * The addon must give sharp's pixels (deepfeat's preprocessing is sharp's, byte for byte): a
 * different libjpeg on this host (not libjpeg-turbo, or one that decodes otherwise) is not used.
 * A few JPEGs of each common kind, whole and in windows, against sharp's decode of the same.
 */
async function differsFromSharp() {
  try {
    const { default: sharp } = await import('sharp');
    const addon = createRequire(import.meta.url)(join(here, 'build', 'Release', 'deepfeat_jpeg.node'));
    const [w, h] = [75, 53];
    const px = Buffer.alloc(w * h * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * 37 + ((i * i) % 251)) & 255;
    const kinds = {
      '4:2:0': { quality: 90 },
      '4:4:4': { quality: 90, chromaSubsampling: '4:4:4' },
      progressive: { quality: 80, progressive: true },
    };
    for (const [kind, options] of Object.entries(kinds)) {
      for (const grey of [false, true]) {
        let image = sharp(px, { raw: { width: w, height: h, channels: 3 } });
        if (grey) image = image.toColourspace('b-w');
        const bytes = await image.jpeg(options).toBuffer();
        // Windows that start or end on a 16-pixel boundary: where a crop's edge would show.
        for (const [x, y, ww, wh] of [
          [0, 0, w, h],
          [16, 9, 40, 30],
          [32, 0, 43, 53],
          [0, 8, 48, 45],
        ]) {
          const out = new Uint8Array(ww * wh * 3);
          const failed = addon.decode(bytes, x, y, ww, wh, out);
          const want = await sharp(bytes)
            .extract({ left: x, top: y, width: ww, height: wh })
            .toColourspace('srgb')
            .raw()
            .toBuffer();
          if (failed !== undefined || !want.equals(out))
            return `${kind}${grey ? ' grey' : ''} ${ww}×${wh} at ${x},${y}`;
        }
      }
    }
    return undefined;
  } catch (err) {
    return `checking it failed: ${String(err).slice(0, 120)}`;
  }
}
