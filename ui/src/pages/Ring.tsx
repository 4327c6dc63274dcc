// Ring: the token space coloured by owner, each shard's share, the ranges unfinished jobs
// move (GET /api/v1/ring/moves) highlighted, and a key box answered by the server (GET
// /api/v1/ring/lookup: the routing function itself).
import { useId, useState, type FormEvent } from "react";
import { request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { colours, shares } from "../lib/ring";
import { percent } from "../lib/format";
import type { Catalog, Lookup, MovingJob } from "../lib/types";
import { RingChart } from "../components/RingChart";
import { Problem } from "../components/Problem";

export function Ring({ session }: { session: Session }) {
  const id = useId();
  const poll = usePoll(() => request<Catalog>("GET", "/api/v1/catalog", { token: session.token }), [session.token]);
  // Without the endpoint (an older server) nothing is highlighted; the fences still are.
  const moves = usePoll(
    () => request<{ jobs: MovingJob[] }>("GET", "/api/v1/ring/moves", { token: session.token }),
    [session.token]);
  const movingJobs = moves.data?.jobs ?? [];
  const moving = movingJobs.flatMap((j) => j.moves.map((m) => ({ ...m, job: j.id })));
  const [key, setKey] = useState("");
  const [kind, setKind] = useState("auto");
  const [result, setResult] = useState<Lookup | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const cat = poll.data;
  const share = cat ? shares(cat.ring) : {};
  const names = cat ? cat.shards.map((s) => s.name) : [];
  const colour = cat ? colours([...names, ...cat.ring.map((v) => v[1])]) : {};

  const lookup = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const q = new URLSearchParams({ key, kind });
      setResult(await request<Lookup>("GET", `/api/v1/ring/lookup?${q}`, { token: session.token }));
    } catch (err) {
      setResult(null);
      setError(err as Error);
    }
  };
  return (
    <section aria-labelledby="ring-title">
      <h1 id="ring-title">Ring</h1>
      <Problem error={poll.error} />
      <form className="panel inline" onSubmit={lookup} aria-label="Look up a key">
        <div className="field">
          <label htmlFor={`${id}-key`}>Shard key</label>
          <input id={`${id}-key`} name="key" required value={key} onChange={(e) => setKey(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-kind`}>Key type</label>
          <select id={`${id}-kind`} name="kind" value={kind} onChange={(e) => setKind(e.target.value)}>
            <option value="auto">as written (text form)</option>
            <option value="int">integer</option>
            <option value="uuid">uuid</option>
            <option value="text">text</option>
          </select>
        </div>
        <button type="submit" className="primary">Look up</button>
      </form>
      <Problem error={error} />
      <div aria-live="polite">
        {result && (
          <p className="lookup" data-testid="lookup-result">
            Key <code>{result.key}</code> (hashed as <code>{result.canonical}</code>) has token{" "}
            <code>{result.token}</code> and goes to <strong data-testid="lookup-shard">{result.shard}</strong>
            {" "}(vnode range ({result.range.lo}, {result.range.hi}], catalog version {result.catalog_version})
            {result.fenced ? `; writes to it are held by job ${result.fenced.job}` : ""}.
          </p>
        )}
      </div>
      {cat && (
        <div className="ring-layout">
          <RingChart vnodes={cat.ring} fences={cat.fences ?? []} moving={moving} shards={names}
            mark={result ? { token: result.token, shard: result.shard } : null} />
          <table>
            <caption>Share of the token space (catalog version {cat.version})</caption>
            <thead><tr><th scope="col">Shard</th><th scope="col">Vnodes</th><th scope="col">Share</th></tr></thead>
            <tbody>
              {cat.shards.map((s) => (
                <tr key={s.name}>
                  <th scope="row"><span className="swatch" style={{ background: colour[s.name] ?? "#fff" }} aria-hidden="true" /> {s.name}</th>
                  <td>{s.vnodes}</td>
                  <td>{percent(share[s.name] ?? 0)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {movingJobs.length > 0 && (
        <ul className="moving-jobs" aria-label="Jobs moving ranges" data-testid="moving-jobs">
          {movingJobs.map((j) => (
            <li key={j.id}>
              <span className="swatch" style={{ background: colour[j.target] ?? "#111827" }} aria-hidden="true" /> Job{" "}
              <a href={`#/jobs/${encodeURIComponent(j.id)}`}>{j.id}</a> ({j.kind}
              {j.source ? ` ${j.source}` : ""} → {j.target}, {j.phase ?? j.state}) moves{" "}
              {j.moves.length} range{j.moves.length === 1 ? "" : "s"}, {percent(j.share)} of the
              token space (in {j.target}'s colour, just outside the ring).
            </li>
          ))}
        </ul>
      )}
      {cat && (cat.fences ?? []).length > 0 && (
        <p data-testid="fenced-ranges">{cat.fences.length} range(s) are fenced now: writes to them
          wait while ownership flips (black, outermost).</p>
      )}
    </section>
  );
}
