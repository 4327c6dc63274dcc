// The ring as drawn: each vnode owns the token range (previous token, its token], the first
// one wrapping around from the last. Pure functions, tested in ring.test.ts.

export const TOKEN_SPACE = 2 ** 32;
export const MAX_TOKEN = TOKEN_SPACE - 1;

export type Vnode = [number, string];

export interface Arc {
  token: number;   // the vnode's token (the range's inclusive end)
  lo: number;      // exclusive start (-1 for the wrapped first range's second half)
  hi: number;
  owner: string;
  index: number;
}

/** One arc per vnode, by ascending token; the first vnode gets two pieces (wrap-around). */
export function arcs(vnodes: Vnode[]): Arc[] {
  const sorted = [...vnodes].sort((a, b) => a[0] - b[0]);
  if (sorted.length === 0) return [];
  const out: Arc[] = [];
  const last = sorted[sorted.length - 1][0];
  sorted.forEach(([token, owner], i) => {
    const lo = i === 0 ? -1 : sorted[i - 1][0];
    out.push({ token, lo, hi: token, owner, index: i });
  });
  if (last < MAX_TOKEN) {
    out.push({ token: sorted[0][0], lo: last, hi: MAX_TOKEN, owner: sorted[0][1], index: 0 });
  }
  return out;
}

/** Each shard's share of the token space. */
export function shares(vnodes: Vnode[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const a of arcs(vnodes)) out[a.owner] = (out[a.owner] ?? 0) + (a.hi - a.lo);
  for (const k of Object.keys(out)) out[k] /= TOKEN_SPACE;
  return out;
}

/** The angle (radians, clockwise from 12 o'clock) of a token. */
export function angle(token: number): number {
  return ((token + 1) / TOKEN_SPACE) * 2 * Math.PI;
}

/** An SVG path for the ring segment between two tokens. */
export function arcPath(lo: number, hi: number, cx: number, cy: number, r: number, w: number): string {
  const a0 = angle(lo);
  const a1 = angle(hi);
  const large = a1 - a0 > Math.PI ? 1 : 0;
  const p = (a: number, rad: number) => [cx + rad * Math.sin(a), cy - rad * Math.cos(a)];
  const [x0, y0] = p(a0, r);
  const [x1, y1] = p(a1, r);
  const [x2, y2] = p(a1, r - w);
  const [x3, y3] = p(a0, r - w);
  const f = (n: number) => n.toFixed(2);
  return `M${f(x0)} ${f(y0)}A${r} ${r} 0 ${large} 1 ${f(x1)} ${f(y1)}L${f(x2)} ${f(y2)}` +
    `A${r - w} ${r - w} 0 ${large} 0 ${f(x3)} ${f(y3)}Z`;
}

// Dark enough for 4.5:1 against white, distinct from one another.
export const PALETTE = ["#1d4ed8", "#b45309", "#15803d", "#7e22ce", "#be123c", "#0e7490",
  "#4d7c0f", "#a21caf", "#9a3412", "#334155"];

export function colours(shards: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  [...new Set(shards)].sort().forEach((s, i) => (out[s] = PALETTE[i % PALETTE.length]));
  return out;
}
