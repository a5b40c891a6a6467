/**
 * Limited-memory BFGS minimiser with a strong-Wolfe line search (Nocedal & Wright,
 * "Numerical Optimization", algorithms 7.4, 3.5 and 3.6). Pure sequential arithmetic
 * on Float64Arrays, so identical inputs give bit-identical results.
 */
import { InternalError } from '../../shared/errors.js';

/** Objective: writes the gradient at `x` into `grad` and returns the value at `x`. */
export type ObjectiveWithGradient = (x: Float64Array, grad: Float64Array) => number;

/** Tuning knobs; all optional. */
export interface LbfgsOptions {
  /** Maximum number of L-BFGS iterations (line searches). Default 200. */
  maxIterations?: number;
  /** Number of (s, y) correction pairs kept. Default 10. */
  memory?: number;
  /** Converged when max_i |grad_i| <= this. Default 1e-5. */
  gradientTolerance?: number;
  /** Converged when (f_prev - f) / max(|f_prev|, |f|, 1) <= this. Default 1e-10. */
  functionTolerance?: number;
}

/** Result of a minimisation. `x` is the best point found, `f` its value. */
export interface LbfgsResult {
  x: Float64Array;
  f: number;
  iterations: number;
  converged: boolean;
  /** Why the loop stopped: 'gradient tolerance', 'function tolerance', 'max iterations', 'line search failed'. */
  reason: string;
}

// Wolfe constants: c1 small (sufficient decrease), c2 = 0.9 is the usual quasi-Newton choice.
const C1 = 1e-4;
const C2 = 0.9;
const MAX_LINE_SEARCH_EVALS = 30;

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function maxAbs(a: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const v = Math.abs(a[i]);
    if (v > m || Number.isNaN(v)) m = v;
  }
  return m;
}

/**
 * Minimiser of the cubic through (a, fa, da) and (b, fb, db), safeguarded to stay well
 * inside [a, b]; falls back to bisection when the cubic is degenerate.
 */
function cubicStep(a: number, fa: number, da: number, b: number, fb: number, db: number): number {
  const lo = Math.min(a, b);
  const hi = Math.max(a, b);
  const margin = 0.1 * (hi - lo);
  const d1 = da + db - (3 * (fa - fb)) / (a - b);
  const disc = d1 * d1 - da * db;
  if (Number.isFinite(disc) && disc >= 0 && Number.isFinite(fb)) {
    const d2 = Math.sign(b - a) * Math.sqrt(disc);
    const t = b - (b - a) * ((db + d2 - d1) / (db - da + 2 * d2));
    if (Number.isFinite(t) && t >= lo + margin && t <= hi - margin) return t;
  }
  return (a + b) / 2;
}

interface LineSearchState {
  fg: ObjectiveWithGradient;
  x: Float64Array;
  p: Float64Array;
  f0: number;
  d0: number;
  /** Output: trial point and its gradient; hold the accepted point on success. */
  xt: Float64Array;
  gt: Float64Array;
}

/** Evaluates the objective at x + alpha p into state.xt / state.gt; returns [f, directional derivative]. */
function evaluateAt(s: LineSearchState, alpha: number): [number, number] {
  const { x, p, xt, gt } = s;
  for (let i = 0; i < x.length; i++) xt[i] = x[i] + alpha * p[i];
  const f = s.fg(xt, gt);
  return [f, dot(gt, p)];
}

/**
 * Strong-Wolfe line search. On success returns the accepted value f with the point in
 * xt/gt; returns null if no acceptable step was found within the evaluation budget.
 */
function lineSearch(s: LineSearchState, alphaInit: number): number | null {
  let evals = 0;
  const armijo = (alpha: number, f: number): boolean => f <= s.f0 + C1 * alpha * s.d0;

  const zoom = (lo0: number, flo0: number, dlo0: number, hi0: number, fhi0: number, dhi0: number): number | null => {
    let lo = lo0,
      flo = flo0,
      dlo = dlo0,
      hi = hi0,
      fhi = fhi0,
      dhi = dhi0;
    let bestAlpha = lo,
      bestF = flo; // best Armijo point seen, in case the budget runs out
    while (evals < MAX_LINE_SEARCH_EVALS) {
      if (Math.abs(hi - lo) <= 1e-16 * Math.max(1, Math.abs(lo))) break;
      const alpha = cubicStep(lo, flo, dlo, hi, fhi, dhi);
      const [f, d] = evaluateAt(s, alpha);
      evals++;
      if (!Number.isFinite(f) || !armijo(alpha, f) || f >= flo) {
        hi = alpha;
        fhi = f;
        dhi = d;
      } else {
        if (Math.abs(d) <= -C2 * s.d0) return f;
        if (f < bestF) {
          bestF = f;
          bestAlpha = alpha;
        }
        if (d * (hi - lo) >= 0) {
          hi = lo;
          fhi = flo;
          dhi = dlo;
        }
        lo = alpha;
        flo = f;
        dlo = d;
      }
    }
    // Budget exhausted: accept the best sufficient-decrease point (the curvature test
    // in the caller decides whether it updates the Hessian model).
    if (bestAlpha > 0 && bestF < s.f0) {
      const [f] = evaluateAt(s, bestAlpha);
      return f;
    }
    return null;
  };

  let prevAlpha = 0,
    prevF = s.f0,
    prevD = s.d0;
  let alpha = alphaInit;
  while (evals < MAX_LINE_SEARCH_EVALS) {
    const [f, d] = evaluateAt(s, alpha);
    evals++;
    if (!Number.isFinite(f) || !armijo(alpha, f) || (evals > 1 && f >= prevF)) {
      return zoom(prevAlpha, prevF, prevD, alpha, f, d);
    }
    if (Math.abs(d) <= -C2 * s.d0) return f;
    if (d >= 0) return zoom(alpha, f, d, prevAlpha, prevF, prevD);
    prevAlpha = alpha;
    prevF = f;
    prevD = d;
    alpha *= 4; // still descending steeply: extrapolate
  }
  return null;
}

/**
 * Minimises a smooth function with L-BFGS. Starts at a copy of `x0` (not modified).
 * Stops on the gradient test, the relative-decrease test, the iteration cap, or when the
 * line search cannot make progress even along steepest descent (then `converged` is
 * false, but `x` is still the best point found).
 */
export function minimizeLbfgs(fg: ObjectiveWithGradient, x0: Float64Array, opts: LbfgsOptions = {}): LbfgsResult {
  const maxIterations = opts.maxIterations ?? 200;
  const m = Math.max(1, opts.memory ?? 10);
  const gtol = opts.gradientTolerance ?? 1e-5;
  const ftol = opts.functionTolerance ?? 1e-10;
  const n = x0.length;

  let x = Float64Array.from(x0);
  let g = new Float64Array(n);
  let f = fg(x, g);
  if (!Number.isFinite(f)) throw new InternalError(`L-BFGS: objective is not finite at the starting point (${f})`);

  // Correction pairs, oldest first. m is small (~10), so shift/push is cheap.
  const S: Float64Array[] = [];
  const Y: Float64Array[] = [];
  const rho: number[] = [];
  const alphaBuf = new Float64Array(m);
  const p = new Float64Array(n);
  let xt = new Float64Array(n);
  let gt = new Float64Array(n);
  const forget = (): void => {
    S.length = 0;
    Y.length = 0;
    rho.length = 0;
  };

  if (maxAbs(g) <= gtol) return { x, f, iterations: 0, converged: true, reason: 'gradient tolerance' };

  let iterations = 0;
  while (iterations < maxIterations) {
    // Two-loop recursion: p = -H g, where H is the implicit inverse-Hessian estimate.
    const count = S.length;
    for (let i = 0; i < n; i++) p[i] = -g[i];
    for (let j = count - 1; j >= 0; j--) {
      const a = rho[j] * dot(S[j], p);
      alphaBuf[j] = a;
      const yj = Y[j];
      for (let i = 0; i < n; i++) p[i] -= a * yj[i];
    }
    if (count > 0) {
      const gamma = 1 / (rho[count - 1] * dot(Y[count - 1], Y[count - 1])); // s'y / y'y scales H0
      for (let i = 0; i < n; i++) p[i] *= gamma;
    }
    for (let j = 0; j < count; j++) {
      const a = alphaBuf[j] - rho[j] * dot(Y[j], p);
      const sj = S[j];
      for (let i = 0; i < n; i++) p[i] += a * sj[i];
    }

    let d0 = dot(g, p);
    if (!(d0 < 0)) {
      // Not a descent direction (numerical trouble): forget the history, use -g.
      forget();
      for (let i = 0; i < n; i++) p[i] = -g[i];
      d0 = dot(g, p);
    }
    // Without curvature information a unit step along -g can be wildly scaled; start
    // with a step of length <= 1 instead. With history, the quasi-Newton step 1 is natural.
    const alpha0 = S.length === 0 ? Math.min(1, 1 / Math.sqrt(-d0)) : 1;

    const state: LineSearchState = { fg, x, p, f0: f, d0, xt, gt };
    let fNew = lineSearch(state, alpha0);
    if (fNew === null && S.length > 0) {
      // Retry once along steepest descent with fresh history.
      forget();
      for (let i = 0; i < n; i++) p[i] = -g[i];
      state.d0 = dot(g, p);
      fNew = lineSearch(state, Math.min(1, 1 / Math.sqrt(-state.d0)));
    }
    if (fNew === null) return { x, f, iterations, converged: false, reason: 'line search failed' };
    iterations++;

    // Curvature pair; skipped when s'y is not safely positive, which would make H indefinite.
    let sy = 0;
    let yy = 0;
    for (let i = 0; i < n; i++) {
      const si = xt[i] - x[i];
      const yi = gt[i] - g[i];
      sy += si * yi;
      yy += yi * yi;
    }
    if (sy > 1e-12 * yy && sy > 0) {
      // Recycle the oldest pair's buffers once the memory is full.
      const s = S.length === m ? (S.shift() as Float64Array) : new Float64Array(n);
      const y = Y.length === m ? (Y.shift() as Float64Array) : new Float64Array(n);
      if (rho.length === m) rho.shift();
      for (let i = 0; i < n; i++) {
        s[i] = xt[i] - x[i];
        y[i] = gt[i] - g[i];
      }
      S.push(s);
      Y.push(y);
      rho.push(1 / sy);
    }

    const fPrev = f;
    [x, xt] = [xt, x];
    [g, gt] = [gt, g];
    f = fNew;

    if (maxAbs(g) <= gtol) return { x, f, iterations, converged: true, reason: 'gradient tolerance' };
    if ((fPrev - f) / Math.max(Math.abs(fPrev), Math.abs(f), 1) <= ftol) {
      return { x, f, iterations, converged: true, reason: 'function tolerance' };
    }
  }
  return { x, f, iterations, converged: false, reason: 'max iterations' };
}
