// A shard's primary changes for operators: switchover (planned) and failover (now), each
// after a confirmation that says what happens, with the replica to promote chosen or left
// to the manager; rejoin of a fenced old primary. Offered only when the server's API
// document has the operation; the server's problem+json answer is shown as it is.
import { useId, useState } from "react";
import { can, hasOperation, request, type Session } from "../lib/api";
import { seconds } from "../lib/format";
import type { HaServer, PrimaryChange, ShardView } from "../lib/types";
import { Confirm } from "../components/Confirm";
import { Problem } from "../components/Problem";

type Op = "switchover" | "failover";

const PATHS: Record<Op | "rejoin", string> = {
  switchover: "/api/v1/shards/{name}/switchover",
  failover: "/api/v1/shards/{name}/failover",
  rejoin: "/api/v1/shards/{name}/rejoin",
};

export function haOperations(session: Session, paths: Record<string, string[]> | null) {
  const writer = can(session, "catalog:write");
  return {
    switchover: writer && hasOperation(paths, "post", PATHS.switchover),
    failover: writer && hasOperation(paths, "post", PATHS.failover),
    rejoin: writer && hasOperation(paths, "post", PATHS.rejoin),
  };
}

/** The replicas a primary change may promote: from the HA view where the server gives one,
 * else from the overview's own server list. */
export function promotable(shard: ShardView): HaServer[] {
  const ha = shard.ha?.servers;
  if (ha) return ha.filter((s) => s.role === "replica");
  return shard.servers
    .filter((s) => s.role !== "primary" && s.address)
    .map((s) => ({ dsn: s.address!, role: "replica", healthy: s.healthy, lag_bytes: s.lag_bytes,
      lag_seconds: s.lag_seconds }));
}

/** host:port of a postgresql:// URL (the API shows DSNs with the password starred). */
export function address(dsn: string): string {
  try {
    const u = new URL(dsn);
    return u.host || dsn;
  } catch {
    return dsn;
  }
}

function describe(s: HaServer): string {
  const facts = [s.healthy === false ? "unhealthy" : s.healthy ? "healthy" : "health unknown"];
  if (s.sync) facts.push("synchronous");
  if (s.lag_seconds !== undefined && s.lag_seconds !== null) facts.push(`lag ${seconds(s.lag_seconds)}`);
  return `${s.dsn} (${facts.join(", ")})`;
}

export function ShardHaActions({ shard, session, paths, onChange }: {
  shard: ShardView;
  session: Session;
  paths: Record<string, string[]> | null;
  onChange: () => void;
}) {
  const id = useId();
  const ops = haOperations(session, paths);
  const [op, setOp] = useState<Op | null>(null);
  const [to, setTo] = useState("");
  const [busy, setBusy] = useState<Op | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [done, setDone] = useState<{ op: Op; reply: PrimaryChange } | null>(null);
  if (!ops.switchover && !ops.failover) return null;
  const replicas = promotable(shard);
  const sync = (shard.ha?.sync_quorum ?? 0) > 0;
  const primary = shard.servers.find((s) => s.role === "primary")?.address ?? "the primary";

  const run = async () => {
    const which = op!;
    setOp(null);
    setBusy(which);
    setError(null);
    setDone(null);
    try {
      const reply = await request<PrimaryChange>(
        "POST", `/api/v1/shards/${encodeURIComponent(shard.name)}/${which}`,
        { token: session.token, body: to ? { to } : {} });
      setDone({ op: which, reply });
      onChange();
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(null);
    }
  };
  const open = (which: Op) => {
    setTo("");
    setOp(which);
  };
  return (
    <div className="ha-actions" data-testid="ha-actions">
      {ops.switchover && (
        <button type="button" disabled={busy !== null || replicas.length === 0}
          onClick={() => open("switchover")}>
          {busy === "switchover" ? "Switching over…" : `Switchover ${shard.name}`}
        </button>
      )}
      {ops.failover && (
        <button type="button" className="danger" disabled={busy !== null || replicas.length === 0}
          onClick={() => open("failover")}>
          {busy === "failover" ? "Failing over…" : `Failover ${shard.name}`}
        </button>
      )}
      {replicas.length === 0 && <span className="muted">No replica to promote.</span>}
      <Problem error={error} />
      {done && (
        <p className="ok" role="status" data-testid="ha-result">
          {done.op === "switchover" ? "Switchover" : "Failover"} of {shard.name} done: the primary
          is now {done.reply.last_failover?.to ?? address(done.reply.primary)}
          {done.reply.old_primary ? ` (was ${done.reply.old_primary})` : ""}, catalog version{" "}
          {done.reply.catalog_version}
          {done.reply.pause_seconds !== undefined ? `; statements were held ${seconds(done.reply.pause_seconds)}` : ""}.
        </p>
      )}
      {op && (
        <Confirm title={`${op === "switchover" ? "Switchover" : "Failover"} of ${shard.name}?`}
          confirmLabel={op === "switchover" ? "Switch over" : "Fail over now"} danger={op === "failover"}
          onConfirm={run} onCancel={() => setOp(null)}>
          {op === "switchover" ? (
            <p>A planned change of primary: every router holds {shard.name}'s statements, work in
              flight on {primary} finishes, {primary} is stopped or made read-only, the replica
              replays its last WAL and is promoted, then the routers send the held statements to
              it. None fails; they wait for the switch (seconds).</p>
          ) : (
            <p>{primary} is fenced (never routed to again) and a replica is promoted at once,
              without waiting for {primary} to finish its work: statements in flight there fail.
              {sync ? " Only a synchronous standby is promoted, so no acknowledged commit is lost."
                : " Replication is asynchronous: commits the replica had not received are lost."}
              {" "}The old primary can rejoin as a replica afterwards.</p>
          )}
          <div className="field">
            <label htmlFor={`${id}-to`}>Replica to promote</label>
            <select id={`${id}-to`} value={to} onChange={(e) => setTo(e.target.value)}>
              <option value="">the manager's choice (the most advanced {sync ? "synchronous " : ""}replica)</option>
              {replicas.map((r) => <option key={r.dsn} value={r.dsn}>{describe(r)}</option>)}
            </select>
          </div>
        </Confirm>
      )}
    </div>
  );
}

/** A fenced old primary and the button that makes it a replica again. */
export function RejoinButton({ shard, dsn, session, onChange }: {
  shard: string;
  dsn: string;
  session: Session;
  onChange: () => void;
}) {
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const rejoin = async () => {
    setConfirming(false);
    setBusy(true);
    setError(null);
    try {
      await request("POST", `/api/v1/shards/${encodeURIComponent(shard)}/rejoin`,
        { token: session.token, body: { dsn } });
      onChange();
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" disabled={busy} onClick={() => setConfirming(true)}>
        {busy ? "Rejoining…" : `Rejoin ${dsn}`}
      </button>
      <Problem error={error} />
      {confirming && (
        <Confirm title={`Rejoin ${dsn} to ${shard}?`} confirmLabel="Rejoin"
          onConfirm={rejoin} onCancel={() => setConfirming(false)}>
          <p>{dsn} is rewound (or cloned afresh) from {shard}'s primary and restarted as its
            streaming replica; what it held that the new primary lacks is discarded.</p>
        </Confirm>
      )}
    </>
  );
}
