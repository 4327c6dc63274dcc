// Start a resharding job: the request is planned by the server first (GET /api/v1/ring/plan,
// the job's own planner, nothing written) so the confirmation says what will move; then
// POST /api/v1/jobs.
import { useId, useState, type FormEvent } from "react";
import { request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { percent } from "../lib/format";
import { KINDS, candidates, type Kind } from "../lib/jobs";
import type { Job, JobPreview, ShardSummary } from "../lib/types";
import { Confirm } from "../components/Confirm";
import { Problem } from "../components/Problem";

const WHAT: Record<Kind, string> = {
  split: "half of each of the source's vnode ranges move to a shard that owns none",
  merge: "all of the source's ranges move into the target; the source is then removed",
  rebalance: "a shard that owns none takes its share of vnodes from every serving shard",
};

export function StartJobForm({ session, onStarted }: { session: Session; onStarted: (job: Job) => void }) {
  const id = useId();
  const shards = usePoll(
    () => request<{ shards: ShardSummary[] }>("GET", "/api/v1/shards", { token: session.token }),
    [session.token], 5000);
  const [kind, setKind] = useState<Kind>("split");
  const [source, setSource] = useState("");
  const [target, setTarget] = useState("");
  const [preview, setPreview] = useState<JobPreview | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const [started, setStarted] = useState<Job | null>(null);
  const list = shards.data?.shards ?? [];
  const choice = candidates(kind, list, source);
  // A choice that is no longer possible (the ring changed) falls back to the first one.
  const src = kind === "rebalance" ? "" : (choice.sources.includes(source) ? source : choice.sources[0] ?? "");
  const tgt = choice.targets.includes(target) ? target : (candidates(kind, list, src).targets[0] ?? "");

  const plan = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    setStarted(null);
    setBusy(true);
    try {
      const q = new URLSearchParams({ kind, target: tgt });
      if (src) q.set("source", src);
      setPreview(await request<JobPreview>("GET", `/api/v1/ring/plan?${q}`, { token: session.token }));
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  const start = async () => {
    const p = preview!;
    setPreview(null);
    setBusy(true);
    try {
      const body: Record<string, string> = { kind: p.kind, target: p.target };
      if (p.source) body.source = p.source;
      const job = await request<Job>("POST", "/api/v1/jobs", { token: session.token, body });
      setStarted(job);
      onStarted(job);
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="panel" onSubmit={plan} aria-labelledby={`${id}-t`}>
      <h2 id={`${id}-t`}>Start a resharding job</h2>
      <Problem error={shards.error} />
      <div className="field">
        <label htmlFor={`${id}-kind`}>Kind</label>
        <select id={`${id}-kind`} name="kind" value={kind} onChange={(e) => setKind(e.target.value as Kind)}>
          {KINDS.map((k) => <option key={k} value={k}>{k}</option>)}
        </select>
      </div>
      {kind !== "rebalance" && (
        <div className="field">
          <label htmlFor={`${id}-source`}>Source shard</label>
          <select id={`${id}-source`} name="source" value={src} onChange={(e) => setSource(e.target.value)}>
            {choice.sources.map((n) => <option key={n} value={n}>{n}</option>)}
          </select>
        </div>
      )}
      <div className="field">
        <label htmlFor={`${id}-target`}>{kind === "merge" ? "Merge into" : "Target shard"}</label>
        <select id={`${id}-target`} name="target" value={tgt} onChange={(e) => setTarget(e.target.value)}>
          {candidates(kind, list, src).targets.map((n) => <option key={n} value={n}>{n}</option>)}
        </select>
      </div>
      <p className="muted">{WHAT[kind]}.
        {kind !== "merge" && candidates(kind, list, src).targets.length === 0 && shards.data
          && <> No shard owns nothing yet: add one on the <a href="#/overview">Overview</a> page first.</>}</p>
      <button type="submit" className="primary" disabled={busy || !tgt || (kind !== "rebalance" && !src)}>
        {busy ? "Working…" : `Start ${kind}…`}
      </button>
      <Problem error={error} />
      {started && (
        <p className="ok" role="status" data-testid="job-started">
          Started job <a href={`#/jobs/${encodeURIComponent(started.id)}`}>{started.id}</a>{" "}
          ({started.kind} {started.source ? `${started.source} → ` : ""}{started.target}).
        </p>
      )}
      {preview && (
        <Confirm title={`Start the ${preview.kind}?`} confirmLabel={`Start ${preview.kind}`}
          onConfirm={start} onCancel={() => setPreview(null)}>
          <PreviewText p={preview} />
        </Confirm>
      )}
    </form>
  );
}

export function PreviewText({ p }: { p: JobPreview }) {
  const from = p.sources.join(", ");
  return (
    <div data-testid="job-preview">
      <p>{p.ranges} token range{p.ranges === 1 ? "" : "s"}, {percent(p.share)} of the token
        space, move from {from} to {p.target}
        {p.source && p.source_ownership[p.source]
          ? ` (${percent(p.share / p.source_ownership[p.source])} of what ${p.source} owns)` : ""}.</p>
      <p>{p.rows_estimate === null
        ? `Rows to copy: not known (${Object.entries(p.rows_by_source)
          .filter(([, r]) => r.error).map(([s, r]) => `${s}: ${r.error}`).join("; ") || "no estimate"}).`
        : `About ${p.rows_estimate} row${p.rows_estimate === 1 ? "" : "s"} of ${p.tables.length} sharded table${p.tables.length === 1 ? "" : "s"} will be copied (estimated from ${from}'s statistics).`}</p>
      <p>Reads and writes go on meanwhile; at the end, writes to the moving ranges pause
        briefly while both sides are verified and ownership flips.</p>
      {p.busy && (
        <p className="error" role="alert">Job {p.busy.job} ({p.busy.kind}) is still {p.busy.state} on{" "}
          {p.busy.shards.join(", ")}: the server will refuse this one until it ends.</p>
      )}
    </div>
  );
}
