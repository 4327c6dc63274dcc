import { describe, expect, it } from "vitest";
import { cancellable, candidates, isActive, phaseIndex, progress, stateText } from "../lib/jobs";

describe("job progress", () => {
  it.each([
    // [job, copied, total, fraction]
    [{ id: "a", state: "running", phase: "copy", progress: { rows_copied: 25, rows_total: 100 } }, 25, 100, 0.25],
    [{ id: "b", state: "running", phase: "copy", rows_copied: 10, rows_total: 40 }, 10, 40, 0.25],
    [{ id: "c", state: "pending", phase: "schema" }, 0, null, null],
    [{ id: "c2", state: "pending", phase: "schema", rows_copied: 0, rows_total: 0 }, 0, null, null],
    [{ id: "c3", state: "running", phase: "copy", rows_copied: 0, rows_total: 0 }, 0, null, null],
    [{ id: "c4", state: "running", phase: "copy", rows_copied: 5, rows_total: 0 }, 5, null, null],
    [{ id: "d", state: "running", phase: "catchup", rows_copied: 0, rows_total: 0 }, 0, 0, 1],
    [{ id: "e", state: "done", phase: null, rows_copied: 7, rows_total: 9 }, 7, 9, 1],
    [{ id: "f", state: "running", phase: "copy", rows_copied: 12, rows_total: 10 }, 12, 10, 1],
    [{ id: "g", state: "cancelled", phase: null, rows_copied: 0, rows_total: 0 }, 0, null, null],
    [{ id: "h", state: "failed", phase: null, rows_copied: 40, rows_total: 90 }, 40, 90, null],
  ])("reads %o", (job, copied, total, fraction) => {
    const p = progress(job);
    expect([p.copied, p.total, p.fraction]).toEqual([copied, total, fraction]);
  });

  it("prefers the nested progress and takes the write pause in ms or s", () => {
    const p = progress({ id: "x", progress: { rows_copied: 5, rows_total: 6, lag_bytes: 2048 },
      rows_copied: 1, rows_total: 2, lag_bytes: 1, write_pause_ms: 420 });
    expect(p).toEqual({ copied: 5, total: 6, fraction: 5 / 6, lagBytes: 2048, pauseSeconds: 0.42, counted: true });
    expect(progress({ id: "y", write_pause_seconds: 1.5 }).pauseSeconds).toBe(1.5);
    expect(progress({ id: "z" }).pauseSeconds).toBeNull();
  });
});

describe("job state", () => {
  it("offers cancel until the flip, and not twice", () => {
    expect(cancellable({ id: "a", state: "running", phase: "copy" })).toBe(true);
    expect(cancellable({ id: "a", state: "pending", phase: "schema" })).toBe(true);
    expect(cancellable({ id: "a", state: "running", phase: "cleanup" })).toBe(false);
    expect(cancellable({ id: "a", state: "running", phase: "fence", cancel_requested: true })).toBe(false);
    for (const state of ["done", "failed", "cancelled"]) {
      expect(isActive({ id: "a", state })).toBe(false);
      expect(cancellable({ id: "a", state })).toBe(false);
    }
    expect(stateText({ id: "a", state: "running", cancel_requested: true })).toBe("cancelling");
    expect(stateText({ id: "a", state: "cancelled", cancel_requested: true })).toBe("cancelled");
  });

  it("places the job among its phases", () => {
    expect(phaseIndex({ id: "a", state: "running", phase: "copy" })).toBe(1);
    expect(phaseIndex({ id: "a", state: "running", phase: "cleanup" })).toBe(5);
    expect(phaseIndex({ id: "a", state: "done", phase: null })).toBe(6);
    expect(phaseIndex({ id: "a", state: "failed", phase: null })).toBe(-1);
  });
});

describe("job request candidates", () => {
  const shards = [
    { name: "shard0", status: "active", vnodes: 256, ownership: 0.5 },
    { name: "shard1", status: "active", vnodes: 256, ownership: 0.5 },
    { name: "spare", status: "active", vnodes: 0, ownership: 0 },
  ];
  it("splits a serving shard into an empty one", () => {
    expect(candidates("split", shards, "shard0")).toEqual({ sources: ["shard0", "shard1"], targets: ["spare"] });
  });
  it("merges a serving shard into another serving one", () => {
    expect(candidates("merge", shards, "shard1")).toEqual({ sources: ["shard0", "shard1"], targets: ["shard0"] });
  });
  it("rebalances into an empty shard, with no source", () => {
    expect(candidates("rebalance", shards, "shard0")).toEqual({ sources: [], targets: ["spare"] });
  });
});
