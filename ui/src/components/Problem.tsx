// An error from the sidecar, said plainly.
import { ApiError } from "../lib/api";

export function Problem({ error }: { error: Error | null }) {
  if (!error) return null;
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : "";
  return (
    <p className="error" role="alert">
      {error instanceof ApiError ? error.title : "Error"}
      {status}: {error.message}
    </p>
  );
}

/** A feature this server does not have yet: said so, driven by its 404 or its API document. */
export function NotAvailable({ what, evidence }: { what: string; evidence: string }) {
  return (
    <div className="notice" role="status">
      <strong>{what} — not available on this server yet.</strong>
      <p>{evidence}</p>
    </div>
  );
}
