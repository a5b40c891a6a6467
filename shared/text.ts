/**
 * Text built from user data (keys, labels, manifest lines, file contents, model names) before it
 * goes into a message. Two separate concerns, each in one place:
 * - `capText`: bound the length of anything quoted from user input, so a 1 MB junk manifest header
 *   cannot become a 1 MB error in Redis, `status` and logs.
 * - `terminalSafe`: make a string harmless on a terminal (no ANSI escapes, no carriage returns
 *   that overwrite a line). Only for human output: JSON output keeps the exact text.
 */

/** Default longest quoted user text in a message, in characters. */
export const MAX_QUOTED_CHARS = 200;
/** Longest message we store or print (a run error, an image's failure reason). */
export const MAX_MESSAGE_CHARS = 2000;

/**
 * `s` cut to at most `max` characters (UTF-16 units, never splitting a surrogate pair), with
 * "…(N more characters)" saying how much was dropped.
 */
export function capText(s: string, max = MAX_QUOTED_CHARS): string {
  if (s.length <= max) return s;
  let end = max;
  const c = s.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--; // do not leave half a surrogate pair
  return `${s.slice(0, end)}…(${s.length - end} more characters)`;
}

/** JSON.stringify of user text, capped: for quoting a key or label inside a message. */
export function quote(s: string, max = MAX_QUOTED_CHARS): string {
  return JSON.stringify(capText(s, max));
}

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const CONTROL_BUT_LAYOUT =
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(ch: string): string {
  const code = ch.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * One field of user text (a key, a label, a reason) made harmless on a terminal: every control
 * character — C0 including newline and tab, DEL, C1, and the Unicode line and bidi controls that
 * reorder what a reader sees — becomes a visible escape such as `\x1b`, `\x0a` or `\u202e`.
 */
export function terminalSafe(s: string): string {
  return s.replace(CONTROL, escapeChar);
}

/** Like `terminalSafe`, but keeps newlines and tabs: for whole blocks the CLI itself laid out. */
export function terminalSafeLines(s: string): string {
  return s.replace(CONTROL_BUT_LAYOUT, escapeChar);
}

/**
 * JSON text of `value` that is safe on a terminal and still the same JSON: JSON.stringify escapes
 * C0 controls, and this also writes DEL, C1 and the Unicode line and bidi controls as \uXXXX.
 */
export function terminalSafeJson(value: unknown, space?: number): string {
  // Not C0: JSON.stringify escapes those inside strings, and any other is its own layout newline.
  return JSON.stringify(value, null, space).replace(
    NON_C0_CONTROL,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

const NON_C0_CONTROL = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
