// Jobs: resharding jobs with live progress (GET /api/v1/jobs, polled), one job's detail,
// cancel, and the form that starts a split, merge or rebalance. A server without the jobs API
// answers 404: the page says so rather than showing anything made up.
import { useState } from "react";
import { ApiError, can, hasOperation, request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { bytes, seconds } from "../lib/format";
import { cancellable, isActive, progress, stateText } from "../lib/jobs";
import type { Job } from "../lib/types";
import { NotAvailable, Problem } from "../components/Problem";
import { JobProgress } from "../components/JobProgress";
import { ACTIVE_POLL_MS, CancelJob, stateClass } from "../components/CancelJob";
import { JobDetail } from "./JobDetail";
import { StartJobForm } from "./StartJobForm";

export function Jobs({ session, paths, jobId }: {
  session: Session;
  paths: Record<string, string[]> | null;
  jobId?: string | null;
}) {
  return jobId
    ? <JobDetail session={session} paths={paths} jobId={jobId} />
    : <JobsPage session={session} paths={paths} />;
}

function JobsPage({ session, paths }: { session: Session; paths: Record<string, string[]> | null }) {
  const [fast, setFast] = useState(false);
  const poll = usePoll(async () => {
    const doc = await request<{ jobs: Job[] }>("GET", "/api/v1/jobs", { token: session.token });
    setFast((doc.jobs ?? []).some(isActive));
    return doc;
  }, [session.token], fast ? ACTIVE_POLL_MS : undefined);
  const missing = poll.error instanceof ApiError && poll.error.status === 404;
  const writer = can(session, "catalog:write");
  return (
    <section aria-labelledby="jobs-title">
      <h1 id="jobs-title">Jobs</h1>
      {missing ? (
        <NotAvailable what="Resharding jobs (split, merge, rebalance)"
          evidence={`GET /api/v1/jobs answered 404: ${poll.error?.message}. Shards can be added on the Overview page; moving ranges needs the jobs API.`} />
      ) : (
        <>
          <Problem error={poll.error} />
          {!poll.data && !poll.error && <p>Loading…</p>}
          {poll.data && <JobList jobs={poll.data.jobs ?? []} session={session} paths={paths} onChange={poll.refresh} />}
          {writer && hasOperation(paths, "post", "/api/v1/jobs") && (
            <StartJobForm session={session} onStarted={poll.refresh} />
          )}
        </>
      )}
    </section>
  );
}

function JobList({ jobs, session, paths, onChange }: {
  jobs: Job[];
  session: Session;
  paths: Record<string, string[]> | null;
  onChange: () => void;
}) {
  const mayCancel = can(session, "catalog:write") && hasOperation(paths, "post", "/api/v1/jobs/{id}/cancel");
  if (jobs.length === 0) return <p>No jobs.</p>;
  // Newest first: the job just started is at the top.
  const rows = [...jobs].reverse();
  return (
    <table data-testid="jobs-table">
      <caption className="sr-only">Resharding jobs, newest first</caption>
      <thead><tr><th scope="col">Job</th><th scope="col">Kind</th><th scope="col">From → to</th>
        <th scope="col">State</th><th scope="col">Phase</th><th scope="col">Progress</th>
        <th scope="col">Lag</th><th scope="col">Write pause</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
      <tbody>
        {rows.map((j) => {
          const p = progress(j);
          return (
            <tr key={j.id} data-testid={`job-${j.id}`}>
              <th scope="row"><a href={`#/jobs/${encodeURIComponent(j.id)}`}>{j.id}</a></th>
              <td>{j.kind ?? ""}</td>
              <td>{j.source ?? (j.sources ?? []).join(", ")} → {j.target ?? ""}</td>
              <td><span className={stateClass(j)} data-testid="job-state">{stateText(j)}</span>
                {j.error && <div className="error detail" data-testid="job-error">{j.error}</div>}</td>
              <td data-testid="job-phase">{j.phase ?? "—"}</td>
              <td><JobProgress job={j} /></td>
              <td>{bytes(p.lagBytes)}</td>
              <td>{seconds(p.pauseSeconds)}</td>
              <td>{mayCancel && cancellable(j) && <CancelJob job={j} session={session} onDone={onChange} />}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
