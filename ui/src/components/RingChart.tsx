// The token space as a circle: one arc per vnode coloured by its owner; ranges an unfinished
// resharding job moves are drawn just outside the ring in their destination's colour, ranges
// held by its fence outside those (black); the looked-up key's token is marked.
import { useMemo, useState } from "react";
import { arcPath, arcs, angle, colours, type Vnode } from "../lib/ring";

export interface Fence { lo: number; hi: number; job: string }
export interface MovingRange { lo: number; hi: number; src: string; dst: string; job: string }

export function RingChart({ vnodes, fences, mark, moving = [], shards = [] }: {
  vnodes: Vnode[];
  fences: Fence[];
  mark?: { token: number; shard: string } | null;
  moving?: MovingRange[];
  shards?: string[];   // every shard, so that one owning nothing yet has its colour too
}) {
  const [hover, setHover] = useState<string | null>(null);
  const all = useMemo(() => arcs(vnodes), [vnodes]);
  const colour = useMemo(() => colours([...shards, ...vnodes.map((v) => v[1])]), [vnodes, shards]);
  const size = 340, c = size / 2, r = 140, w = 36;
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
        {moving.map((m, i) => (
          <path key={`m${i}`} className="moving" d={arcPath(m.lo, m.hi, c, c, r + 8, 6)}
            fill={colour[m.dst] ?? "#111827"} data-job={m.job} data-src={m.src} data-dst={m.dst}
            onMouseEnter={() => setHover(`moving ${m.src} → ${m.dst} (job ${m.job}): tokens ${m.lo + 1} … ${m.hi}`)}
            onMouseLeave={() => setHover(null)}>
            <title>{`moving ${m.src} → ${m.dst} (job ${m.job}): (${m.lo}, ${m.hi}]`}</title>
          </path>
        ))}
        {fences.map((f, i) => (
          <path key={`f${i}`} className="fence" d={arcPath(f.lo, f.hi, c, c, r + 16, 5)}
            fill="#000" data-job={f.job}>
            <title>{`moving (job ${f.job}): (${f.lo}, ${f.hi}]`}</title>
          </path>
        ))}
        {markAt !== null && (
          <line x1={c} y1={c} x2={c + (r + 18) * Math.sin(markAt)} y2={c - (r + 18) * Math.cos(markAt)}
            stroke="#111" strokeWidth={2} data-testid="key-mark" />
        )}
      </svg>
      <figcaption aria-live="polite">{hover ?? "Hover over the ring to see a vnode's range."}</figcaption>
    </figure>
  );
}
