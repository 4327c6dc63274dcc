// Cancel a job, with a confirmation; a refusal (e.g. 409 after the flip) is shown beside it.
import { useState } from "react";
import { request, type Session } from "../lib/api";
import type { Job } from "../lib/types";
import { Confirm } from "./Confirm";
import { Problem } from "./Problem";

export const ACTIVE_POLL_MS = 1000;   // jobs are polled this often while one runs

export function stateClass(j: Job): string {
  if (j.state === "done") return "ok";
  if (j.state === "failed") return "bad";
  return "";
}

/** Cancel with a confirmation; a refusal (e.g. 409 after the flip) is shown beside it. */
export function CancelJob({ job, session, onDone }: { job: Job; session: Session; onDone: () => void }) {
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const cancel = async () => {
    setConfirming(false);
    setBusy(true);
    setError(null);
    try {
      await request("POST", `/api/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { token: session.token });
      onDone();
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" className="danger" disabled={busy} aria-label={`Cancel job ${job.id}`}
        onClick={() => setConfirming(true)}>
        {busy ? "Cancelling…" : "Cancel"}
      </button>
      <Problem error={error} />
      {confirming && (
        <Confirm title={`Cancel job ${job.id}?`} confirmLabel="Cancel the job" danger
          onConfirm={cancel} onCancel={() => setConfirming(false)}>
          <p>The {job.kind} {job.source ? `of ${job.source} ` : ""}into {job.target} stops and is
            rolled back: the rows copied so far are deleted from {job.target}, the change capture
            and helper indexes are dropped, and the ring stays as it is.</p>
          <p>A job that already flipped ownership cannot be cancelled; it only finishes.</p>
        </Confirm>
      )}
    </>
  );
}
