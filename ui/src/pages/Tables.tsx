// Tables: the sharded tables and their shard key columns; operators declare and forget them.
import { useId, useState, type FormEvent } from "react";
import { can, request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import { Confirm } from "../components/Confirm";
import { Problem } from "../components/Problem";

interface TableList { catalog_version: number; tables: { name: string; shard_key: string }[] }

export function Tables({ session }: { session: Session }) {
  const id = useId();
  const poll = usePoll(() => request<TableList>("GET", "/api/v1/tables", { token: session.token }), [session.token]);
  const [name, setName] = useState("");
  const [column, setColumn] = useState("");
  const [error, setError] = useState<Error | null>(null);
  const [removing, setRemoving] = useState<string | null>(null);
  const writer = can(session, "catalog:write");

  const declare = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      await request("PUT", `/api/v1/tables/${encodeURIComponent(name)}`, { token: session.token, body: { shard_key: column } });
      setName("");
      setColumn("");
      poll.refresh();
    } catch (err) {
      setError(err as Error);
    }
  };
  const remove = async (table: string) => {
    setRemoving(null);
    try {
      await request("DELETE", `/api/v1/tables/${encodeURIComponent(table)}`, { token: session.token });
      poll.refresh();
    } catch (err) {
      setError(err as Error);
    }
  };
  return (
    <section aria-labelledby="tables-title">
      <h1 id="tables-title">Sharded tables</h1>
      <Problem error={poll.error} />
      {poll.data && (
        <table>
          <caption>Catalog version {poll.data.catalog_version}</caption>
          <thead><tr><th scope="col">Table</th><th scope="col">Shard key</th>{writer && <th scope="col"><span className="sr-only">Actions</span></th>}</tr></thead>
          <tbody>
            {poll.data.tables.map((t) => (
              <tr key={t.name}>
                <td>{t.name}</td><td>{t.shard_key}</td>
                {writer && <td><button type="button" onClick={() => setRemoving(t.name)}>Forget {t.name}</button></td>}
              </tr>
            ))}
            {poll.data.tables.length === 0 && <tr><td colSpan={3}>No sharded tables declared.</td></tr>}
          </tbody>
        </table>
      )}
      {writer && (
        <form className="panel inline" onSubmit={declare} aria-labelledby={`${id}-t`}>
          <h2 id={`${id}-t`}>Declare a sharded table</h2>
          <div className="field">
            <label htmlFor={`${id}-n`}>Table ([schema.]name)</label>
            <input id={`${id}-n`} required value={name} onChange={(e) => setName(e.target.value)} />
          </div>
          <div className="field">
            <label htmlFor={`${id}-c`}>Shard key column</label>
            <input id={`${id}-c`} required value={column} onChange={(e) => setColumn(e.target.value)} />
          </div>
          <button type="submit" className="primary">Declare table</button>
        </form>
      )}
      <Problem error={error} />
      {removing && (
        <Confirm title={`Forget table ${removing}?`} confirmLabel="Forget table" danger
          onConfirm={() => remove(removing)} onCancel={() => setRemoving(null)}>
          <p>No rows move or are deleted; pgshard stops routing {removing} by key, so statements on
            it will be refused until it is declared again.</p>
        </Confirm>
      )}
    </section>
  );
}
