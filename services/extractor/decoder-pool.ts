/**
 * Decodes images in separate decoder processes, so that no image can take more than its time or
 * its memory from the extractor, whatever its bytes make the decoder do.
 *
 * Why processes and not threads: sharp runs libvips on libuv's thread pool, shared by the whole
 * process; a worker thread can be terminated, but the native decode it started goes on, holding
 * its CPU and memory. A process can be killed. So each image is decoded in a process that does
 * nothing else at the time:
 * - time: past DEEPFEAT_DECODE_TIMEOUT the process is killed (SIGKILL) and the image recorded as
 *   timed out; the next image gets a fresh process. Nothing inside the process could do it:
 *   sharp's own timeout did not stop a librsvg render or a 100-megapixel PNG decode (image.ts),
 *   and libheif, libjpeg's progressive pass and librsvg run each image in one native call.
 * - memory: each process runs under a data-segment limit (RLIMIT_DATA, DEEPFEAT_DECODE_MEMORY),
 *   so a codec's allocation past it fails (or the process aborts) instead of the host running
 *   out. The extractor's own memory is then bounded by its processes × that limit, plus the
 *   fetched bytes, however hostile a batch.
 * - one image per process at a time also gives libvips's process-wide error buffer to one image.
 * A process that dies during a decode is replaced and the image tried once more, since the
 * death may not be the image's fault (the host's OOM killer); a second death is recorded.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import type { Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { JpegDecoder } from '../../shared/config.js';
import { ImageError, InternalError } from '../../shared/errors.js';
import { capText } from '../../shared/text.js';
import { Channel } from '../../shared/thread-call.js';
import { crashReason, outOfMemoryReason, timeoutReason } from './decode-limits.js';
import { sniffImageFormat } from './image-format.js';
import type { DecodeOptions } from './image.js';
import { decodePlainPng } from './png-simple.js';

/**
 * Calls a decoder process serves. The bytes themselves do not travel on this channel: the
 * image's `length` bytes follow on the process's stdin, and its pixels (`length` in the answer)
 * come back on the pixel pipe (fd 4, PIXEL_FD) before the answer. Through the channel every byte
 * was serialised, concatenated and copied again on each side: in a worker with a large heap,
 * those short-lived buffers drove full garbage collections (issue 14, bench/feed.ts).
 */
export interface DecoderApi {
  /** rssBytes: the process's resident memory, or its peak when that is within half the memory limit. */
  decode(req: { length: number; opts: DecodeOptions }): { length: number; rssBytes: number };
}

/** The decoder process's pipe that carries pixels back (its stdin carries image bytes in). */
export const PIXEL_FD = 4;

/** What the caller chooses per image; the bounds are the pool's. */
export type DecodeRequest = Omit<DecodeOptions, 'memoryLimitMiB' | 'jpegDecoder'>;

export interface DecoderPoolOptions {
  /** Decoder processes, each decoding one image at a time: the decode parallelism (decodeProcesses()). */
  processes: number;
  /** Seconds one image may take (DEEPFEAT_DECODE_TIMEOUT). */
  timeoutSeconds: number;
  /** Data-segment limit of each decoder process in MiB (DEEPFEAT_DECODE_MEMORY); 0 = none. */
  memoryLimitMiB: number;
  /** Who decodes JPEGs (DEEPFEAT_JPEG_DECODER; default auto). */
  jpegDecoder?: JpegDecoder;
  /** Where decoder processes' warnings (libvips on stderr) and restarts are reported. */
  log?: (msg: string, extra?: object) => void;
}

/**
 * Decoder processes for an extractor: DEEPFEAT_DECODE_THREADS, or one per core available to this
 * process (os.availableParallelism(), which follows CPU affinity), so decoding uses every core a
 * host gives it. Each process is one decode thread: libvips on one thread, one image at a time.
 */
export function decodeProcesses(cfg: { readonly decodeThreads: number }): number {
  return cfg.decodeThreads > 0 ? cfg.decodeThreads : Math.max(1, availableParallelism());
}

const ENTRY = fileURLToPath(new URL('./decoder-entry.mjs', import.meta.url));
/**
 * Plain PNGs decoded in the calling process (DecoderPool.decode): files up to 64 KiB (a 32×32
 * CIFAR image: 3 KiB), whose rows png-simple.ts bounds to 256 KiB.
 */
const INLINE_MAX_FILE_BYTES = 64 << 10;
/** How long a new decoder process may take to load sharp and say it is ready. */
const START_TIMEOUT_MS = 60_000;
/** stderr lines logged per decoder process; a hostile file can make a codec warn per scanline. */
const MAX_LOGGED_LINES = 20;

/** The process died during a call (not a deadline the pool enforced). */
class DecoderDied extends InternalError {
  constructor(
    readonly how: string,
    /** The end of what it wrote to stderr: a codec that aborts on a failed allocation says so there. */
    readonly said: string,
  ) {
    super(`decoder process ended: ${how}${said ? `: ${capText(said, 500)}` : ''}`, { permanent: false });
  }

  /** It died because an allocation failed: the image needs more than the process may have. */
  get outOfMemory(): boolean {
    return /failed to allocate|out of memory|cannot allocate memory/i.test(this.said);
  }
}

/** One decoder process and its call channel. */
class DecoderProcess {
  readonly child: ChildProcess;
  readonly channel: Channel<DecoderApi>;
  readonly ready: Promise<void>;
  #ended: string | undefined;
  #loggedLines = 0;
  /** What the process wrote to stderr since its current decode began (the end of it). */
  #stderrTail = '';
  /** Where the pixels of the decode under way go as they arrive; undefined between decodes. */
  #sink: { buf: Uint8Array; filled: number; full: () => void } | undefined;
  /** Rejects once the process has ended (after its stderr was read), with how it ended. */
  readonly #closed: Promise<never>;

  constructor(memoryLimitMiB: number, log: DecoderPoolOptions['log']) {
    // One image at a time on one libvips thread (decoder-process.ts): libuv's pool, where sharp
    // runs, needs one thread, not its default four; it must be sized before the process starts it.
    const options: SpawnOptions = {
      stdio: ['pipe', 'ignore', 'pipe', 'ipc', 'pipe'], // stdin: image bytes; fd 4: pixels
      // The channel carries small plain objects only (calls, answers, WireErrors; no bytes), and
      // JSON costs each side less per message than V8's serializer (issue 14).
      serialization: 'json',
      env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    };
    // RLIMIT_DATA has no Node API; the shell sets it (in KiB) and then becomes node (exec), so the
    // limit and the IPC channel both belong to the decoder process itself.
    const setLimit = 'ulimit -d "$1" || exit 125; shift; exec "$@"';
    const [command, args] =
      memoryLimitMiB > 0
        ? ['/bin/sh', ['-c', setLimit, 'deepfeat-decoder', String(memoryLimitMiB * 1024), process.execPath, ENTRY]]
        : [process.execPath, [ENTRY]];
    this.child = spawn(command, args, options);
    const child = this.child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.#stderrTail = (this.#stderrTail + chunk).slice(-2000);
      for (const line of chunk.split('\n')) {
        if (line.trim() === '' || this.#loggedLines >= MAX_LOGGED_LINES) continue;
        this.#loggedLines++;
        log?.('decoder process says', { pid: child.pid, line: capText(line, 300) });
      }
    });
    // Writing to a process that just died fails (EPIPE); its 'close' reports the death.
    child.stdin!.on('error', () => undefined);
    const pixels = child.stdio[PIXEL_FD] as Socket;
    pixels.on('error', () => undefined);
    pixels.on('data', (chunk: Buffer) => this.#pixels(chunk));
    let ended!: (err: Error) => void;
    this.#closed = new Promise<never>((_, reject) => {
      ended = reject;
    });
    this.#closed.catch(() => undefined);
    this.channel = new Channel<DecoderApi>({
      postMessage: (m: unknown) => {
        if (child.connected) child.send(m as object);
      },
      on: (event: 'message', listener: (m: unknown) => void) => child.on(event, listener),
    });
    // Idle decoder processes must not keep the extractor (or a test) alive.
    this.channel.onBusyChange = (busy) => this.#hold(busy);
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.kill();
        reject(
          new InternalError(`decoder process did not start within ${START_TIMEOUT_MS / 1000} s`, { permanent: false }),
        );
      }, START_TIMEOUT_MS);
      child.on('message', (m: { t?: string }) => {
        if (m?.t !== 'ready') return;
        clearTimeout(timer);
        this.#hold(false);
        resolve();
      });
      // 'close' comes after 'exit' and after stderr has been read to its end.
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        const how = signal ? `signal ${signal}` : `exit code ${code}`;
        this.#ended ??= how;
        const tail = this.#stderrTail.trim();
        this.channel.close(new DecoderDied(how, tail));
        ended(new DecoderDied(how, tail));
        const said = tail ? `: ${capText(tail, 500)}` : '';
        reject(new InternalError(`decoder process ended before it was ready (${how})${said}`, { permanent: false }));
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        this.#ended ??= err.message;
        this.channel.close(new DecoderDied(err.message, ''));
        ended(new DecoderDied(err.message, ''));
        reject(new InternalError(`decoder process could not start: ${err.message}`, { cause: err, permanent: false }));
      });
    });
    this.ready.catch(() => undefined); // observed by the pool
  }

  get alive(): boolean {
    return this.#ended === undefined;
  }

  #hold(busy: boolean): void {
    const handles = [
      this.child,
      this.child.channel,
      this.child.stderr as Socket | null,
      this.child.stdin as Socket | null,
      this.child.stdio[PIXEL_FD] as Socket | null,
    ];
    for (const h of handles) busy ? h?.ref?.() : h?.unref?.();
  }

  /** Pixel bytes from the process: only as many as the decode under way asked for. */
  #pixels(chunk: Buffer): void {
    const sink = this.#sink;
    if (!sink || sink.filled + chunk.length > sink.buf.length) {
      // Not the protocol (a decoder that misbehaves, or worse): end it; its decode is retried once.
      this.kill();
      return;
    }
    sink.buf.set(chunk, sink.filled);
    sink.filled += chunk.length;
    if (sink.filled === sink.buf.length) sink.full();
  }

  /**
   * Decodes one image to `width × height × 3` bytes; past `timeoutSeconds` (transfer of its bytes
   * included) the process is killed.
   */
  async decode(bytes: Uint8Array, opts: DecodeOptions, timeoutSeconds: number) {
    this.#stderrTail = ''; // what an earlier image made a codec say is not this image's
    const expected = opts.width * opts.height * 3;
    let full!: () => void;
    const arrived = new Promise<void>((resolve) => {
      full = resolve;
    });
    // Not zero-filled (a 150 KB memset per image): it is returned only once the process has
    // written every byte of it (`filled` reaches `expected`, below); a buffer of its own, not a
    // slice of Node's shared pool, and a plain Uint8Array as before (Buffer's slice() is a view).
    const sink = { buf: new Uint8Array(Buffer.allocUnsafeSlow(expected).buffer, 0, expected), filled: 0, full };
    const deadline = Date.now() + timeoutSeconds * 1000;
    this.#sink = sink;
    let timer: NodeJS.Timeout | undefined;
    try {
      const answer = this.channel.call(
        'decode',
        { length: bytes.byteLength, opts },
        {
          timeoutMs: timeoutSeconds * 1000,
          onTimeout: () => {
            // Reject the caller first: the exit that follows must not count as a crash.
            this.channel.close(new ImageError(timeoutReason(timeoutSeconds)));
            this.kill();
          },
        },
      );
      this.child.stdin!.write(bytes);
      const { length, rssBytes } = await answer;
      if (length !== expected) {
        this.kill();
        throw new DecoderDied(`it answered ${length} pixel bytes, not ${expected}`, '');
      }
      // The process wrote the pixels before answering: the rest is in the pipe, or already here.
      // Within the same deadline as the answer: one image never gets the timeout twice.
      if (sink.filled < expected) {
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => {
              this.kill();
              reject(new ImageError(timeoutReason(timeoutSeconds)));
            },
            Math.max(0, deadline - Date.now()),
          );
        });
        await Promise.race([arrived, this.#closed, late]);
      }
      return { pixels: sink.buf, rssBytes };
    } finally {
      clearTimeout(timer);
      if (this.#sink === sink) this.#sink = undefined;
    }
  }

  kill(): void {
    this.#ended ??= 'killed';
    this.child.kill('SIGKILL');
  }

  /** Kills the process and waits until it is gone. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.ref(); // wait for the exit even when nothing else keeps the process alive
    this.kill();
    await exited;
  }
}

/** A fixed number of decoder processes, started on first use and replaced when one dies. */
export class DecoderPool {
  readonly #opts: DecoderPoolOptions;
  /** One entry per process slot; undefined until first used or after its process died. */
  readonly #slots: Array<DecoderProcess | undefined>;
  readonly #free: number[];
  readonly #waiting: Array<(slot: number) => void> = [];
  #closed = false;

  constructor(opts: DecoderPoolOptions) {
    if (!(Number.isInteger(opts.processes) && opts.processes >= 1)) {
      throw new RangeError(`DecoderPool: processes must be a whole number ≥ 1, got ${opts.processes}`);
    }
    this.#opts = opts;
    this.#slots = Array.from({ length: opts.processes }, () => undefined);
    this.#free = this.#slots.map((_, i) => i);
  }

  /** Decoder processes (alive or to be started): how many images decode at once. */
  get processes(): number {
    return this.#slots.length;
  }

  /** Process ids of the decoder processes alive now (for measuring their memory). */
  get pids(): number[] {
    return this.#slots.filter((p) => p?.alive && p.child.pid !== undefined).map((p) => p!.child.pid!);
  }

  /** Process ids of those decoding an image right now. */
  get busyPids(): number[] {
    return this.#slots.filter((p) => p?.alive && p.channel.pending > 0).map((p) => p!.child.pid!);
  }

  /**
   * Decode one image to RGB at the requested size (see `decodeImage`). Rejects with ImageError
   * for anything wrong with the image (including its time and memory); with a retryable
   * InternalError if no decoder process can be started at all.
   */
  async decode(bytes: Uint8Array, req: DecodeRequest): Promise<Uint8Array> {
    const limit = this.#opts.memoryLimitMiB;
    const jpegDecoder = this.#opts.jpegDecoder ?? 'auto';
    const opts: DecodeOptions = { ...req, jpegDecoder, ...(limit > 0 ? { memoryLimitMiB: limit } : {}) };
    // A small plain PNG scaled up (png-simple.ts) is decoded right here: handing it to a decoder
    // process and taking its pixels back costs more than decoding it, and its cost is bounded by
    // the sizes below (at most a few milliseconds), so it needs no process to bound it.
    if (bytes.byteLength <= INLINE_MAX_FILE_BYTES) {
      const pixels = decodePlainPng(bytes, opts);
      if (pixels) return pixels;
    }
    const slot = await this.#acquire();
    try {
      for (let attempt = 1; ; attempt++) {
        const proc = await this.#process(slot);
        try {
          const { pixels, rssBytes } = await proc.decode(bytes, opts, this.#opts.timeoutSeconds);
          // A process keeps the memory of the largest image it decoded; past half its limit,
          // start afresh rather than carry that into every later decode.
          if (limit > 0 && rssBytes > (limit * 2 ** 20) / 2) this.#retire(slot);
          return pixels;
        } catch (err) {
          if (!(err instanceof DecoderDied)) {
            if (!proc.alive) this.#retire(slot);
            throw err;
          }
          this.#retire(slot);
          // A codec that aborted on a failed allocation said so: that is this image, under this limit.
          if (err.outOfMemory) throw new ImageError(outOfMemoryReason(opts.memoryLimitMiB), { cause: err });
          this.#opts.log?.('decoder process died during a decode; starting another', { how: err.how, attempt });
          if (attempt >= 2) {
            const sniffed = sniffImageFormat(bytes);
            const format = sniffed.kind === 'decodable' ? sniffed.format : undefined;
            throw new ImageError(crashReason(format, err.how, opts.memoryLimitMiB), { cause: err });
          }
        }
      }
    } finally {
      this.#release(slot);
    }
  }

  /** Kills every decoder process; pending and later decodes reject. */
  async close(): Promise<void> {
    this.#closed = true;
    const procs = this.#slots.filter((p): p is DecoderProcess => p !== undefined);
    this.#slots.fill(undefined);
    await Promise.all(
      procs.map((p) => {
        p.channel.close(new InternalError('decoder pool closed', { permanent: false }));
        return p.stop();
      }),
    );
  }

  async #process(slot: number): Promise<DecoderProcess> {
    if (this.#closed) throw new InternalError('decoder pool closed', { permanent: false });
    let proc = this.#slots[slot];
    if (!proc?.alive) {
      proc = new DecoderProcess(this.#opts.memoryLimitMiB, this.#opts.log);
      this.#slots[slot] = proc;
    }
    try {
      await proc.ready;
    } catch (err) {
      this.#retire(slot);
      throw err;
    }
    return proc;
  }

  #retire(slot: number): void {
    const proc = this.#slots[slot];
    this.#slots[slot] = undefined;
    if (proc?.alive) proc.kill();
  }

  #acquire(): Promise<number> {
    const slot = this.#free.pop();
    if (slot !== undefined) return Promise.resolve(slot);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  #release(slot: number): void {
    const next = this.#waiting.shift();
    if (next) next(slot);
    else this.#free.push(slot);
  }
}
