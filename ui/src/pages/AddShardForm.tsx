// Add a shard: the server connects to the endpoints first, then adds it to the catalog.
import { useId, useState, type FormEvent } from "react";
import { request, type Session } from "../lib/api";
import { Confirm } from "../components/Confirm";
import { Problem } from "../components/Problem";

interface Added { name: string; catalog_version: number; message?: string; owns_ranges?: boolean }

export function AddShardForm({ session, shardCount, onAdded }: {
  session: Session;
  shardCount: number;
  onAdded: () => void;
}) {
  const id = useId();
  const [name, setName] = useState("");
  const [primary, setPrimary] = useState("");
  const [replicas, setReplicas] = useState("");
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [done, setDone] = useState<Added | null>(null);
  const replicaList = replicas.split(/[\s,]+/).filter(Boolean);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    setDone(null);
    setConfirming(true);
  };
  const add = async () => {
    setConfirming(false);
    setBusy(true);
    try {
      const reply = await request<Added>("POST", "/api/v1/shards", {
        token: session.token,
        body: { name, primary, replicas: replicaList },
      });
      setDone(reply);
      setName("");
      setPrimary("");
      setReplicas("");
      onAdded();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="panel" onSubmit={submit} aria-labelledby={`${id}-t`}>
      <h2 id={`${id}-t`}>Add a shard</h2>
      <div className="field">
        <label htmlFor={`${id}-name`}>Name</label>
        <input id={`${id}-name`} name="name" required pattern="[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}"
          value={name} onChange={(e) => setName(e.target.value)} />
      </div>
      <div className="field">
        <label htmlFor={`${id}-primary`}>Primary (postgresql:// URL)</label>
        <input id={`${id}-primary`} name="primary" required type="text" autoComplete="off"
          placeholder="postgresql://user:password@host:5432/db"
          value={primary} onChange={(e) => setPrimary(e.target.value)} />
      </div>
      <div className="field">
        <label htmlFor={`${id}-replicas`}>Replicas (optional, comma separated)</label>
        <input id={`${id}-replicas`} name="replicas" type="text" autoComplete="off"
          value={replicas} onChange={(e) => setReplicas(e.target.value)} />
      </div>
      <button type="submit" className="primary" disabled={busy}>{busy ? "Adding…" : "Add shard"}</button>
      <Problem error={error} />
      {done && (
        <p className="ok" role="status" data-testid="shard-added">
          Added {done.name} (catalog version {done.catalog_version}). {done.message ?? ""}
        </p>
      )}
      {confirming && (
        <Confirm title={`Add shard ${name}?`} confirmLabel="Add shard" onConfirm={add}
          onCancel={() => setConfirming(false)}>
          <p>The server first connects to the primary{replicaList.length ? " and replicas" : ""}.</p>
          <p>
            If no sharded table holds rows, the new shard takes its vnodes at once: about{" "}
            {(100 / (shardCount + 1)).toFixed(0)}% of the token space moves to it, with no data to copy.
            Otherwise it owns nothing until a rebalance moves ranges (and their rows) to it.
          </p>
        </Confirm>
      )}
    </form>
  );
}
