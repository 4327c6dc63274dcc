import { describe, expect, it } from "vitest";
import { HISTORY_POINTS, perSecond, push } from "../lib/history";
import { bytes, seconds } from "../lib/format";

describe("history", () => {
  it("keeps the last HISTORY_POINTS finite values per key", () => {
    let s = {};
    for (let i = 0; i < HISTORY_POINTS + 5; i++) s = push(s, "k", i);
    s = push(s, "k", null);
    s = push(s, "k", Infinity);
    const k = (s as Record<string, number[]>).k;
    expect(k).toHaveLength(HISTORY_POINTS);
    expect(k[k.length - 1]).toBe(HISTORY_POINTS + 4);
  });

  it("computes rates, unknown on the first reading or after a counter reset", () => {
    expect(perSecond(undefined, 10, 1000)).toBeNull();
    expect(perSecond({ value: 10, at: 1000 }, 30, 3000)).toBe(10);
    expect(perSecond({ value: 10, at: 1000 }, 5, 3000)).toBeNull();
  });

  it("formats sizes and durations", () => {
    expect(bytes(null)).toBe("—");
    expect(bytes(512)).toBe("512 B");
    expect(bytes(3 * 1024 * 1024)).toBe("3.0 MiB");
    expect(seconds(0.25)).toBe("250 ms");
    expect(seconds(300)).toBe("5.0 min");
  });
});
