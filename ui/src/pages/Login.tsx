// Login with an API user: POST /api/v1/auth/login, then GET /api/v1/auth/me for permissions.
import { useId, useState, type FormEvent } from "react";
import { login, type Session } from "../lib/api";
import { Problem } from "../components/Problem";

export function Login({ onLogin, notice }: { onLogin: (s: Session) => void; notice?: string | null }) {
  const id = useId();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onLogin(await login(username, password));
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="login">
      <form className="panel" onSubmit={submit} aria-labelledby={`${id}-t`}>
        <h1 id={`${id}-t`}>pgshard console</h1>
        {notice && <p role="status">{notice}</p>}
        <div className="field">
          <label htmlFor={`${id}-u`}>User</label>
          <input id={`${id}-u`} name="username" autoComplete="username" required
            value={username} onChange={(e) => setUsername(e.target.value)} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-p`}>Password</label>
          <input id={`${id}-p`} name="password" type="password" autoComplete="current-password" required
            value={password} onChange={(e) => setPassword(e.target.value)} />
        </div>
        <button type="submit" className="primary" disabled={busy}>{busy ? "Logging in…" : "Log in"}</button>
        <Problem error={error} />
      </form>
    </main>
  );
}
