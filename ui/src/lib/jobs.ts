// Resharding jobs as the console reads them: progress from either shape the server sends
// (nested `progress` or the flat copies), which jobs are still running, which may be
// cancelled, and which shards a job request may name. Pure functions, tested in jobs.test.ts.
import type { Job, ShardSummary } from "./types";

export const PHASES = ["schema", "copy", "catchup", "fence", "verify", "cleanup"] as const;
export const FINAL_STATES = ["done", "failed", "cancelled"];
export const KINDS = ["split", "merge", "rebalance"] as const;
export type Kind = (typeof KINDS)[number];

export interface Progress {
  copied: number;
  total: number | null;          // null: not counted yet
  fraction: number | null;
  lagBytes: number | null;
  pauseSeconds: number | null;   // the write pause, once the fence came down
  counted: boolean;              // whether the copy started (and rows_total was estimated)
}

/** rows_total is the server's estimate, made when the copy starts (0 before: not estimated
 * yet) and raised to rows_copied when the copy ends. */
export function progress(j: Job): Progress {
  const copied = j.progress?.rows_copied ?? j.rows_copied ?? 0;
  const rawTotal = j.progress?.rows_total ?? j.rows_total;
  let total = rawTotal === undefined || rawTotal === null ? null : rawTotal;
  const beforeCopy = j.state === "pending" || j.phase === "schema";
  if (total === 0 && (beforeCopy || j.phase === "copy")) total = null;   // no estimate
  const rolledBack = j.state === "failed" || j.state === "cancelled";
  if (total === 0 && rolledBack) total = null;
  let fraction: number | null = null;
  if (j.state === "done") fraction = 1;
  else if (beforeCopy || rolledBack) fraction = null;
  else if (total !== null && total > 0) fraction = Math.min(1, copied / total);
  else if (total === 0 && j.phase !== "copy") fraction = 1;   // nothing to copy
  const lag = j.progress?.lag_bytes ?? j.lag_bytes;
  const pause = j.write_pause_ms !== undefined && j.write_pause_ms !== null
    ? j.write_pause_ms / 1000
    : j.write_pause_seconds ?? null;
  return { copied, total, fraction, lagBytes: lag ?? null, pauseSeconds: pause, counted: !beforeCopy };
}

export function isActive(j: Job): boolean {
  return !FINAL_STATES.includes(j.state ?? "");
}

/** Cancel is offered until the ownership flip (the cleanup phase comes after it); the server
 * still has the last word (409 once the flip happened). */
export function cancellable(j: Job): boolean {
  return isActive(j) && !j.cancel_requested && j.phase !== "cleanup";
}

/** Where the job stands among the phases: index of the current phase, PHASES.length when
 * done, -1 when it did not finish (failed or cancelled) or the phase is unknown. */
export function phaseIndex(j: Job): number {
  if (j.state === "done") return PHASES.length;
  if (!j.phase) return -1;
  return (PHASES as readonly string[]).indexOf(j.phase);
}

export function stateText(j: Job): string {
  if (j.cancel_requested && isActive(j)) return "cancelling";
  return j.state ?? "unknown";
}

/** The shards a request may name, as the planner would accept them: a split moves half of a
 * serving shard to one that owns nothing, a merge moves all of one serving shard into
 * another, a rebalance fills a shard that owns nothing from all the others. */
export function candidates(kind: Kind, shards: ShardSummary[], source: string) {
  const serving = shards.filter((s) => s.vnodes > 0).map((s) => s.name);
  const empty = shards.filter((s) => s.vnodes === 0).map((s) => s.name);
  if (kind === "rebalance") return { sources: [] as string[], targets: empty };
  if (kind === "split") return { sources: serving, targets: empty };
  return { sources: serving, targets: serving.filter((n) => n !== source) };
}
