// Users: API users and their roles (admins only).
import { useId, useState, type FormEvent } from "react";
import { request, type Session } from "../lib/api";
import { usePoll } from "../lib/poll";
import type { User } from "../lib/types";
import { Confirm } from "../components/Confirm";
import { Problem } from "../components/Problem";

export function Users({ session }: { session: Session }) {
  const id = useId();
  const poll = usePoll(() => request<{ users: User[] }>("GET", "/api/v1/users", { token: session.token }), [session.token]);
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState("viewer");
  const [error, setError] = useState<Error | null>(null);
  const [removing, setRemoving] = useState<string | null>(null);

  const add = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      await request("POST", "/api/v1/users", { token: session.token, body: { name, password, role } });
      setName("");
      setPassword("");
      poll.refresh();
    } catch (err) {
      setError(err as Error);
    }
  };
  const remove = async (user: string) => {
    setRemoving(null);
    try {
      await request("DELETE", `/api/v1/users/${encodeURIComponent(user)}`, { token: session.token });
      poll.refresh();
    } catch (err) {
      setError(err as Error);
    }
  };
  return (
    <section aria-labelledby="users-title">
      <h1 id="users-title">Users</h1>
      <Problem error={poll.error} />
      {poll.data && (
        <table>
          <caption className="sr-only">API users</caption>
          <thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Created</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {poll.data.users.map((u) => (
              <tr key={u.name}>
                <td>{u.name}</td><td>{u.role}</td><td>{u.created_at ?? ""}</td>
                <td>{u.name !== session.name && <button type="button" onClick={() => setRemoving(u.name)}>Delete {u.name}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form className="panel inline" onSubmit={add} aria-labelledby={`${id}-t`}>
        <h2 id={`${id}-t`}>Add a user</h2>
        <div className="field">
          <label htmlFor={`${id}-n`}>Name</label>
          <input id={`${id}-n`} required autoComplete="off" value={name} onChange={(e) => setName(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-p`}>Password (8 characters or more)</label>
          <input id={`${id}-p`} required minLength={8} type="password" autoComplete="new-password"
            value={password} onChange={(e) => setPassword(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-r`}>Role</label>
          <select id={`${id}-r`} value={role} onChange={(e) => setRole(e.target.value)}>
            <option value="viewer">viewer (read only)</option>
            <option value="operator">operator (shards, tables, jobs)</option>
            <option value="admin">admin (everything)</option>
            <option value="app">app (queries over HTTP)</option>
          </select>
        </div>
        <button type="submit" className="primary">Add user</button>
      </form>
      <Problem error={error} />
      {removing && (
        <Confirm title={`Delete user ${removing}?`} confirmLabel="Delete user" danger
          onConfirm={() => remove(removing)} onCancel={() => setRemoving(null)}>
          <p>{removing} can no longer log in; tokens already issued stop working at once.</p>
        </Confirm>
      )}
    </section>
  );
}
