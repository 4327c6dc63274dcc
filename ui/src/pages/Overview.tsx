// Overview: every shard with its servers (health, lag with a sparkline, pool use, rates),
// routers and the catalog version each serves, the store's health, alerts; add a shard.
import { useRef, useState } from "react";
import { can, hasOperation, request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { push, perSecond, type Series } from "../lib/history";
import { bytes, percent, rate, seconds } from "../lib/format";
import type { HaServer, Overview as OverviewDoc, ServerView, ShardView } from "../lib/types";
import { Sparkline } from "../components/Sparkline";
import { Problem } from "../components/Problem";
import { AddShardForm } from "./AddShardForm";
import { RejoinButton, ShardHaActions, haOperations } from "./ShardHa";

interface Rates { qps: Record<string, number | null>; errorsPerSecond: number | null }

export function Overview({ session, paths }: { session: Session; paths: Record<string, string[]> | null }) {
  const [lag, setLag] = useState<Series>({});
  const [rates, setRates] = useState<Rates>({ qps: {}, errorsPerSecond: null });
  const prev = useRef<Record<string, { value: number; at: number }>>({});
  const poll = usePoll(async () => {
    const doc = await request<OverviewDoc>("GET", "/api/v1/overview", { token: session.token });
    const at = Date.now();
    const qps: Record<string, number | null> = {};
    const samples: [string, number | null][] = [];
    for (const sh of doc.shards) {
      for (const s of sh.servers) {
        const k = `${sh.name}/${s.role}`;
        qps[k] = perSecond(prev.current[k], s.queries_total, at);
        prev.current[k] = { value: s.queries_total, at };
        if (s.role !== "primary") samples.push([k, s.lag_bytes]);
      }
    }
    const eps = perSecond(prev.current.__errors, doc.errors_total, at);
    prev.current.__errors = { value: doc.errors_total, at };
    setLag((old) => samples.reduce((acc, [k, v]) => push(acc, k, v), old));
    setRates({ qps, errorsPerSecond: eps });
    return doc;
  }, [session.token]);
  const doc = poll.data;
  const failoverOps = hasOperation(paths, "post", "/api/v1/shards/{name}/switchover")
    || hasOperation(paths, "post", "/api/v1/shards/{name}/failover");
  const ctx = { session, paths, onChange: poll.refresh };

  return (
    <section aria-labelledby="overview-title">
      <h1 id="overview-title">Overview</h1>
      <Problem error={poll.error} />
      {!doc && !poll.error && <p>Loading…</p>}
      {doc && (
        <>
          <Alerts doc={doc} />
          <div className="facts">
            <div><span className="label">Catalog version</span> <span data-testid="catalog-version">{doc.catalog_version}</span></div>
            <div><span className="label">Store</span>{" "}
              <span className={doc.store.reachable ? "ok" : "bad"} data-testid="store-health">
                {doc.store.backend} {doc.store.reachable ? "reachable" : "unreachable"}
              </span></div>
            <div><span className="label">Statements</span> {doc.queries_total}</div>
            <div><span className="label">Errors/s</span> {rate(rates.errorsPerSecond)}</div>
            <div><span className="label">Health from</span> {doc.health_source}</div>
          </div>
          <h2>Shards</h2>
          <div className="shards">
            {doc.shards.map((sh) => (
              <ShardCard key={sh.name} shard={sh} lag={lag} qps={rates.qps} ctx={ctx} />
            ))}
          </div>
          {can(session, "catalog:write") && !failoverOps && (
            <p className="muted" data-testid="failover-unavailable">
              Switchover and failover are not available on this server yet (its API document
              has no switchover or failover operation).
            </p>
          )}
          <h2>Routers</h2>
          <table>
            <caption className="sr-only">Routers and the catalog version each serves</caption>
            <thead><tr><th scope="col">Router</th><th scope="col">Role</th><th scope="col">Catalog version</th>
              <th scope="col">Up to date</th><th scope="col">Leader</th><th scope="col">Proxy</th><th scope="col">Last seen</th></tr></thead>
            <tbody>
              {doc.routers.map((r) => (
                <tr key={r.id}>
                  <td>{r.id}</td><td>{r.role}</td><td>{r.catalog_version ?? "—"}</td>
                  <td className={r.up_to_date ? "ok" : "bad"}>{r.up_to_date ? "yes" : "no"}</td>
                  <td>{r.leader ? "yes" : ""}</td><td>{r.proxy ?? ""}</td><td>{r.updated_at ?? ""}</td>
                </tr>
              ))}
              {doc.routers.length === 0 && <tr><td colSpan={7}>No routers registered.</td></tr>}
            </tbody>
          </table>
          {can(session, "catalog:write") && (
            <AddShardForm session={session} shardCount={doc.shards.length} onAdded={poll.refresh} />
          )}
        </>
      )}
    </section>
  );
}

function Alerts({ doc }: { doc: OverviewDoc }) {
  if (doc.alerts.length === 0) {
    return <p className="ok" data-testid="no-alerts">No alerts: every shard has a healthy primary.</p>;
  }
  return (
    <ul className="alerts" aria-label="Alerts">
      {doc.alerts.map((a, i) => (
        <li key={i} className={`alert ${a.severity}`}><strong>{a.severity}</strong> {a.message}</li>
      ))}
    </ul>
  );
}

function health(s: { healthy: boolean | null }): [string, string] {
  if (s.healthy === null) return ["unknown", "muted"];
  return s.healthy ? ["healthy", "ok"] : ["unhealthy", "bad"];
}

interface Ctx { session: Session; paths: Record<string, string[]> | null; onChange: () => void }

/** The HA view's entry for an overview server (matched by address), if the server sent one. */
function haFor(shard: ShardView, s: ServerView): HaServer | undefined {
  return shard.ha?.servers?.find((h) => h.dsn === s.address && h.role !== "fenced");
}

function syncText(h: HaServer | undefined, primary: boolean): string {
  if (primary || !h || h.sync === undefined || h.sync === null) return "—";
  return h.sync ? "yes" : "no";
}

function ShardCard({ shard, lag, qps, ctx }: { shard: ShardView; lag: Series; qps: Record<string, number | null>; ctx: Ctx }) {
  const [text, cls] = health(shard);
  const fenced = (shard.ha?.servers ?? []).filter((h) => h.role === "fenced");
  const hasSync = shard.ha?.servers?.some((h) => h.sync !== undefined) ?? false;
  const last = shard.ha?.last_failover;
  const ops = haOperations(ctx.session, ctx.paths);
  const cols = hasSync ? 7 : 6;
  return (
    <article className="card" aria-labelledby={`shard-${shard.name}`} data-testid={`shard-${shard.name}`}>
      <h3 id={`shard-${shard.name}`}>
        {shard.name} <span className={`badge ${cls}`} data-testid="shard-health">{text}</span>
      </h3>
      <p className="muted">
        {shard.status} · {shard.vnodes} vnodes · {percent(shard.ownership)} of the ring
        {shard.ha?.sync_quorum ? ` · synchronous replication (ANY ${shard.ha.sync_quorum})` : ""}
      </p>
      <table>
        <caption className="sr-only">Servers of {shard.name}</caption>
        <thead><tr><th scope="col">Server</th><th scope="col">Health</th><th scope="col">Lag</th>
          <th scope="col">History</th>{hasSync && <th scope="col">Sync</th>}
          <th scope="col">Pool (active/open/max)</th><th scope="col">Queries/s</th></tr></thead>
        <tbody>
          {shard.servers.map((s) => (
            <ServerRow key={s.role} shard={shard.name} s={s} lag={lag} qps={qps}
              sync={hasSync ? syncText(haFor(shard, s), s.role === "primary") : null} />
          ))}
          {fenced.map((f) => (
            <tr key={`fenced-${f.dsn}`} data-testid="fenced-server">
              <th scope="row">fenced<br /><span className="muted">{f.dsn}</span></th>
              <td colSpan={cols - 1}>
                <span className="bad">old primary, not routed to</span>{" "}
                {ops.rejoin && <RejoinButton shard={shard.name} dsn={f.dsn} session={ctx.session} onChange={ctx.onChange} />}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {last && (
        <p className="muted" data-testid="last-failover">
          Last {last.kind}: {last.at}, {last.from} → {last.to} in {seconds(last.seconds)} ({last.reason}).
        </p>
      )}
      <ShardHaActions shard={shard} session={ctx.session} paths={ctx.paths} onChange={ctx.onChange} />
    </article>
  );
}

function ServerRow({ shard, s, lag, qps, sync }: { shard: string; s: ServerView; lag: Series; qps: Record<string, number | null>; sync: string | null }) {
  const [text, cls] = health(s);
  const k = `${shard}/${s.role}`;
  return (
    <tr>
      <th scope="row">{s.role}<br /><span className="muted">{s.address ?? ""}</span></th>
      <td className={cls} title={s.reason ?? undefined}>{text}{s.reason ? `: ${s.reason}` : ""}</td>
      <td className="nowrap">{s.role === "primary" ? "—" : `${bytes(s.lag_bytes)} / ${seconds(s.lag_seconds)}`}</td>
      <td>{s.role === "primary" ? "" : <Sparkline values={lag[k] ?? []} label={`lag of ${k} in bytes`} />}</td>
      {sync !== null && <td data-testid="server-sync">{sync}</td>}
      <td>{s.pool.max_servers === 0 ? "no pool open yet"
        : `${s.pool.active}/${s.pool.servers}/${s.pool.max_servers}${s.pool.waiters ? ` (${s.pool.waiters} waiting)` : ""}`}</td>
      <td>{rate(qps[k] ?? null)}</td>
    </tr>
  );
}
