import { describe, expect, it } from "vitest";
import { arcs, shares, TOKEN_SPACE, MAX_TOKEN, angle, colours, PALETTE } from "../lib/ring";

describe("ring arcs", () => {
  const vnodes: [number, string][] = [[1000, "b"], [100, "a"], [3_000_000_000, "a"]];

  it("cover the token space exactly once, the first vnode wrapping around", () => {
    const all = arcs(vnodes);
    const total = all.reduce((n, a) => n + (a.hi - a.lo), 0);
    expect(total).toBe(TOKEN_SPACE);
    expect(all[0]).toMatchObject({ lo: -1, hi: 100, owner: "a" });
    expect(all[all.length - 1]).toMatchObject({ lo: 3_000_000_000, hi: MAX_TOKEN, owner: "a" });
  });

  it("give each shard its share", () => {
    const s = shares(vnodes);
    expect(s.b).toBeCloseTo(900 / TOKEN_SPACE, 12);
    expect(s.a + s.b).toBeCloseTo(1, 12);
  });

  it("has no arcs for an empty ring and no wrap piece when the last token is the maximum", () => {
    expect(arcs([])).toEqual([]);
    expect(arcs([[MAX_TOKEN, "x"]])).toHaveLength(1);
    expect(shares([[MAX_TOKEN, "x"]]).x).toBe(1);
  });

  it("places tokens clockwise from the top", () => {
    expect(angle(-1)).toBe(0);
    expect(angle(MAX_TOKEN)).toBeCloseTo(2 * Math.PI, 12);
  });

  it("gives shards stable colours by name", () => {
    expect(colours(["s2", "s1"])).toEqual({ s1: PALETTE[0], s2: PALETTE[1] });
    // One entry per vnode (names repeat) gives the same colours as the names alone.
    expect(colours(["s2", "s1", "s2", "s1", "s1"])).toEqual({ s1: PALETTE[0], s2: PALETTE[1] });
  });
});
