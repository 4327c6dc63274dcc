// Jobs: resharding jobs with live progress, once the server has them (GET /api/v1/jobs).
// A server without them answers 404: the page says so rather than showing anything made up.
import { ApiError, can, hasOperation, request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { bytes, seconds } from "../lib/format";
import { NotAvailable, Problem } from "../components/Problem";

export interface Job {
  id: string;
  kind?: string;
  state?: string;
  phase?: string;
  rows_copied?: number;
  rows_total?: number;
  lag_bytes?: number;
  write_pause_seconds?: number;
  created_at?: string;
  error?: string | null;
}

export function Jobs({ session, paths }: { session: Session; paths: Record<string, string[]> | null }) {
  const poll = usePoll(
    () => request<{ jobs: Job[] }>("GET", "/api/v1/jobs", { token: session.token }),
    [session.token],
  );
  const missing = poll.error instanceof ApiError && poll.error.status === 404;
  return (
    <section aria-labelledby="jobs-title">
      <h1 id="jobs-title">Jobs</h1>
      {missing ? (
        <NotAvailable what="Resharding jobs (split, merge, rebalance)"
          evidence={`GET /api/v1/jobs answered 404: ${poll.error?.message}. Shards can be added on the Overview page; moving ranges needs the jobs API.`} />
      ) : (
        <>
          <Problem error={poll.error} />
          {poll.data && <JobList jobs={poll.data.jobs ?? []} session={session} paths={paths} onChange={poll.refresh} />}
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
  const cancellable = can(session, "catalog:write") && hasOperation(paths, "post", "/api/v1/jobs/{id}/cancel");
  if (jobs.length === 0) return <p>No jobs.</p>;
  return (
    <table>
      <caption className="sr-only">Resharding jobs</caption>
      <thead><tr><th scope="col">Job</th><th scope="col">Kind</th><th scope="col">Phase</th>
        <th scope="col">Progress</th><th scope="col">Lag</th><th scope="col">Write pause</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
      <tbody>
        {jobs.map((j) => {
          const total = j.rows_total ?? 0;
          const done = j.rows_copied ?? 0;
          return (
            <tr key={j.id}>
              <td>{j.id}</td><td>{j.kind ?? ""}</td><td>{j.phase ?? j.state ?? ""}</td>
              <td>
                <progress max={total || 1} value={total ? done : 0} aria-label={`rows copied for job ${j.id}`} />{" "}
                {done} / {total || "?"}
              </td>
              <td>{bytes(j.lag_bytes)}</td>
              <td>{seconds(j.write_pause_seconds)}</td>
              <td>
                {cancellable && (
                  <button type="button" onClick={async () => {
                    await request("POST", `/api/v1/jobs/${encodeURIComponent(j.id)}/cancel`, { token: session.token });
                    onChange();
                  }}>Cancel job {j.id}</button>
                )}
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
