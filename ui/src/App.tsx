// The console shell: login, navigation between pages (hash routes, so /ui serves one file),
// and the pages a role may use; what a role may not do is not offered.
import { useCallback, useEffect, useState } from "react";
import { UNAUTHORIZED_EVENT, can, loadSession, saveSession, serverPaths, type Session } from "./lib/api";
import { Login } from "./pages/Login";
import { Overview } from "./pages/Overview";
import { Ring } from "./pages/Ring";
import { Jobs } from "./pages/Jobs";
import { Tables } from "./pages/Tables";
import { Users } from "./pages/Users";
import { Audit } from "./pages/Audit";

interface Page { id: string; title: string; permission: string }

export const PAGES: Page[] = [
  { id: "overview", title: "Overview", permission: "catalog:read" },
  { id: "ring", title: "Ring", permission: "catalog:read" },
  { id: "jobs", title: "Jobs", permission: "catalog:read" },
  { id: "tables", title: "Tables", permission: "catalog:read" },
  { id: "users", title: "Users", permission: "users:admin" },
  { id: "audit", title: "Audit log", permission: "audit:read" },
];

/** The page and what follows it in the hash: #/jobs/ID is the Jobs page's job ID. */
function currentRoute(): string {
  return window.location.hash.replace(/^#\/?/, "") || "overview";
}

export function App() {
  const [session, setSession] = useState<Session | null>(() => loadSession());
  const [route, setRoute] = useState(currentRoute);
  const [page, ...rest] = route.split("/");
  const sub = rest.length ? decodeURIComponent(rest.join("/")) : null;
  const [paths, setPaths] = useState<Record<string, string[]> | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  useEffect(() => {
    const onHash = () => setRoute(currentRoute());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  useEffect(() => {
    serverPaths().then(setPaths, () => setPaths({}));
  }, []);
  const logout = useCallback((why: string | null = null) => {
    saveSession(null);
    setSession(null);
    setNotice(why);
  }, []);
  // An expired or revoked token: back to the login form, saying why.
  useEffect(() => {
    const onUnauthorized = (e: Event) =>
      logout(`Logged out: ${(e as CustomEvent<string>).detail}`);
    window.addEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
  }, [logout]);
  useEffect(() => {
    if (!session) return;
    const ms = Date.parse(session.expiresAt) - Date.now();
    if (!(ms > 0)) {
      logout("Your session expired; log in again.");
      return;
    }
    const t = setTimeout(() => logout("Your session expired; log in again."), Math.min(ms, 2 ** 31 - 1));
    return () => clearTimeout(t);
  }, [session, logout]);

  if (!session) {
    return <Login notice={notice} onLogin={(s) => { saveSession(s); setSession(s); setNotice(null); }} />;
  }
  const visible = PAGES.filter((p) => can(session, p.permission));
  const active = visible.find((p) => p.id === page) ?? visible[0];
  return (
    <>
      <a className="skip" href="#content">Skip to content</a>
      <header className="top">
        <span className="brand">pgshard</span>
        <nav aria-label="Console pages">
          <ul>
            {visible.map((p) => (
              <li key={p.id}>
                <a href={`#/${p.id}`} aria-current={active?.id === p.id ? "page" : undefined}>{p.title}</a>
              </li>
            ))}
          </ul>
        </nav>
        <span className="who">{session.name} ({session.role})</span>
        <button type="button" onClick={() => logout()}>Log out</button>
      </header>
      <main id="content" tabIndex={-1}>
        {!active && (
          <p role="status">The role {session.role} has no console pages (it may run queries over
            HTTP only).</p>
        )}
        {active?.id === "overview" && <Overview session={session} paths={paths} />}
        {active?.id === "ring" && <Ring session={session} />}
        {active?.id === "jobs" && <Jobs session={session} paths={paths} jobId={sub} />}
        {active?.id === "tables" && <Tables session={session} />}
        {active?.id === "users" && <Users session={session} />}
        {active?.id === "audit" && <Audit session={session} />}
      </main>
    </>
  );
}
