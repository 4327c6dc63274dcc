// A job's progress: rows copied of total as a bar with its numbers beside it.
import { progress } from "../lib/jobs";
import type { Job } from "../lib/types";

export function JobProgress({ job }: { job: Job }) {
  const p = progress(job);
  const label = `rows copied for job ${job.id}`;
  if (job.state === "failed" || job.state === "cancelled") {
    return (
      <span className="job-progress muted" data-testid="job-rows">
        rolled back{p.copied ? ` (${p.copied} rows had been copied)` : ""}
      </span>
    );
  }
  const text = p.total === null
    ? (p.counted ? `${p.copied} rows` : "not counted yet")
    : `${p.copied} / ${p.total} rows`;
  return (
    <span className="job-progress">
      {p.fraction === null
        ? <progress aria-label={label} />
        : p.total !== null && p.total > 0 && p.fraction < 1
          ? <progress aria-label={label} max={p.total} value={p.copied} />
          : <progress aria-label={label} max={1} value={p.fraction} />}{" "}
      <span data-testid="job-rows">{text}</span>
      {p.fraction !== null && <span className="muted"> ({Math.round(p.fraction * 100)}%)</span>}
    </span>
  );
}
