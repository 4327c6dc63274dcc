// One job: its phases, progress, lag, write pause, error, and (while it runs) the token
// ranges it moves; polled every second while it runs.
import { can, hasOperation, request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { bytes, percent, seconds } from "../lib/format";
import { PHASES, cancellable, isActive, phaseIndex, progress, stateText } from "../lib/jobs";
import type { Job, MovingJob } from "../lib/types";
import { Problem } from "../components/Problem";
import { JobProgress } from "../components/JobProgress";
import { ACTIVE_POLL_MS, CancelJob, stateClass } from "../components/CancelJob";

export function JobDetail({ session, paths, jobId }: {
  session: Session;
  paths: Record<string, string[]> | null;
  jobId: string;
}) {
  const poll = usePoll(async () => {
    const job = await request<Job>("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}`, { token: session.token });
    let moving: MovingJob | null = null;
    if (isActive(job)) {
      try {
        const m = await request<{ jobs: MovingJob[] }>("GET", "/api/v1/ring/moves", { token: session.token });
        moving = m.jobs.find((x) => x.id === jobId) ?? null;
      } catch {
        moving = null;   // a server without the endpoint: the ranges are simply not listed
      }
    }
    return { job, moving };
  }, [session.token, jobId], ACTIVE_POLL_MS);
  const job = poll.data?.job;
  const mayCancel = can(session, "catalog:write") && hasOperation(paths, "post", "/api/v1/jobs/{id}/cancel");
  return (
    <section aria-labelledby="job-title">
      <h1 id="job-title">Job {jobId}</h1>
      <p><a href="#/jobs">All jobs</a></p>
      <Problem error={poll.error} />
      {!job && !poll.error && <p>Loading…</p>}
      {job && (
        <>
          <dl className="facts" data-testid="job-detail">
            <div><dt className="label">Kind</dt><dd>{job.kind}</dd></div>
            <div><dt className="label">From → to</dt><dd>{job.source ?? (job.sources ?? []).join(", ")} → {job.target}</dd></div>
            <div><dt className="label">State</dt><dd className={stateClass(job)} data-testid="job-state">{stateText(job)}</dd></div>
            <div><dt className="label">Ranges</dt><dd>{job.moves ?? "—"}</dd></div>
            <div><dt className="label">Lag</dt><dd>{bytes(progress(job).lagBytes)}</dd></div>
            <div><dt className="label">Write pause</dt><dd>{seconds(progress(job).pauseSeconds)}</dd></div>
            <div><dt className="label">Created</dt><dd>{job.created_at ?? "—"}</dd></div>
            <div><dt className="label">Updated</dt><dd>{job.updated_at ?? "—"}</dd></div>
          </dl>
          <Phases job={job} />
          <p><JobProgress job={job} /></p>
          {job.error && <p className="error" role="alert">Error: {job.error}</p>}
          {mayCancel && cancellable(job) && <CancelJob job={job} session={session} onDone={poll.refresh} />}
          {poll.data?.moving && <Moving m={poll.data.moving} />}
        </>
      )}
    </section>
  );
}

function Phases({ job }: { job: Job }) {
  const at = phaseIndex(job);
  return (
    <ol className="phases" aria-label="Phases">
      {PHASES.map((ph, i) => {
        const state = at === -1 ? "" : i < at ? "past" : i === at ? "current" : "";
        return (
          <li key={ph} className={state} aria-current={state === "current" ? "step" : undefined}>
            {ph}{state === "past" ? " ✓" : ""}
          </li>
        );
      })}
    </ol>
  );
}

function Moving({ m }: { m: MovingJob }) {
  return (
    <details>
      <summary>{m.moves.length} moving range{m.moves.length === 1 ? "" : "s"} ({percent(m.share)} of the token space; <a href="#/ring">see them on the ring</a>)</summary>
      <table>
        <caption className="sr-only">Token ranges this job moves</caption>
        <thead><tr><th scope="col">Tokens (lo, hi]</th><th scope="col">From</th><th scope="col">To</th></tr></thead>
        <tbody>
          {m.moves.map((r) => (
            <tr key={`${r.lo}-${r.hi}`}><td>({r.lo}, {r.hi}]</td><td>{r.src}</td><td>{r.dst}</td></tr>
          ))}
        </tbody>
      </table>
    </details>
  );
}
