// The token space as a circle: one arc per vnode coloured by its owner; ranges held by a
// resharding fence are drawn outside the ring; the looked-up key's token is marked.
import { useMemo, useState } from "react";
import { arcPath, arcs, angle, colours, type Vnode } from "../lib/ring";

export interface Fence { lo: number; hi: number; job: string }

export function RingChart({ vnodes, fences, mark }: {
  vnodes: Vnode[];
  fences: Fence[];
  mark?: { token: number; shard: string } | null;
}) {
  const [hover, setHover] = useState<string | null>(null);
  const all = useMemo(() => arcs(vnodes), [vnodes]);
  const colour = useMemo(() => colours([...new Set(vnodes.map((v) => v[1]))]), [vnodes]);
  const size = 320, c = size / 2, r = 140, w = 36;
  const markAt = mark ? angle(mark.token) : null;
  return (
    <figure className="ring">
      <svg width={size} height={size} viewBox={`0 0 ${size} ${size}`} role="img"
        aria-label={`Hash ring of ${vnodes.length} vnodes`}>
        {all.map((a, i) => (
          <path key={i} d={arcPath(a.lo, a.hi, c, c, r, w)} fill={colour[a.owner]}
            stroke="#fff" strokeWidth={0.3} data-owner={a.owner}
            onMouseEnter={() => setHover(`vnode ${a.index} (${a.owner}): tokens ${a.lo + 1} … ${a.hi}`)}
            onMouseLeave={() => setHover(null)}>
            <title>{`${a.owner}: (${a.lo}, ${a.hi}]`}</title>
          </path>
        ))}
        {fences.map((f, i) => (
          <path key={`f${i}`} className="fence" d={arcPath(f.lo, f.hi, c, c, r + 10, 6)}
            fill="#000" data-job={f.job}>
            <title>{`moving (job ${f.job}): (${f.lo}, ${f.hi}]`}</title>
          </path>
        ))}
        {markAt !== null && (
          <line x1={c} y1={c} x2={c + (r + 12) * Math.sin(markAt)} y2={c - (r + 12) * Math.cos(markAt)}
            stroke="#111" strokeWidth={2} data-testid="key-mark" />
        )}
      </svg>
      <figcaption aria-live="polite">{hover ?? "Hover over the ring to see a vnode's range."}</figcaption>
    </figure>
  );
}
