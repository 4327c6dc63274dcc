// Audit log: every mutating call, newest first, filtered by actor and action on the server.
import { useId, useState } from "react";
import { request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import type { AuditRecord } from "../lib/types";
import { Problem } from "../components/Problem";

export function Audit({ session }: { session: Session }) {
  const id = useId();
  const [actor, setActor] = useState("");
  const [action, setAction] = useState("");
  const poll = usePoll(() => {
    const q = new URLSearchParams({ limit: "200" });
    if (actor) q.set("actor", actor);
    if (action) q.set("action", action);
    return request<{ records: AuditRecord[] }>("GET", `/api/v1/audit?${q}`, { token: session.token });
  }, [session.token, actor, action]);
  return (
    <section aria-labelledby="audit-title">
      <h1 id="audit-title">Audit log</h1>
      <form className="panel inline" onSubmit={(e) => e.preventDefault()} aria-label="Filter the audit log">
        <div className="field">
          <label htmlFor={`${id}-a`}>Actor</label>
          <input id={`${id}-a`} value={actor} onChange={(e) => setActor(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-x`}>Action (e.g. shard.add)</label>
          <input id={`${id}-x`} value={action} onChange={(e) => setAction(e.target.value)} />
        </div>
      </form>
      <Problem error={poll.error} />
      {poll.data && (
        <table data-testid="audit-table">
          <caption className="sr-only">Audit records, newest first</caption>
          <thead><tr><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Role</th><th scope="col">Action</th>
            <th scope="col">Target</th><th scope="col">Result</th><th scope="col">Status</th><th scope="col">Detail</th></tr></thead>
          <tbody>
            {poll.data.records.map((r, i) => (
              <tr key={r.seq ?? i}>
                <td>{r.time}</td><td>{r.actor}</td><td>{r.role ?? ""}</td><td>{r.action}</td>
                <td>{r.target ?? ""}</td><td className={r.result === "ok" ? "ok" : "bad"}>{r.result}</td>
                <td>{r.status}</td><td className="detail">{r.detail ?? ""}</td>
              </tr>
            ))}
            {poll.data.records.length === 0 && <tr><td colSpan={8}>No matching records.</td></tr>}
          </tbody>
        </table>
      )}
    </section>
  );
}
