// The REST client: the bearer token lives in memory (and sessionStorage, so a reload keeps
// the login for this tab only); never in a cookie.

export class ApiError extends Error {
  status: number;
  title: string;
  constructor(status: number, title: string, detail: string) {
    super(detail);
    this.status = status;
    this.title = title;
  }
}

const TOKEN_KEY = "pgshard.console.session";
export const UNAUTHORIZED_EVENT = "pgshard:unauthorized";

export interface Session {
  token: string;
  name: string;
  role: string;
  permissions: string[];
  expiresAt: string;
}

export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(TOKEN_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null): void {
  if (s) sessionStorage.setItem(TOKEN_KEY, JSON.stringify(s));
  else sessionStorage.removeItem(TOKEN_KEY);
}

export type Fetcher = typeof fetch;

/** One call to the sidecar; a problem+json answer becomes an ApiError. */
export async function request<T>(
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; fetcher?: Fetcher } = {},
): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const f = opts.fetcher ?? fetch;
  let resp: Response;
  try {
    resp = await f(path, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (e) {
    throw new ApiError(0, "Network error", `the sidecar did not answer: ${String(e)}`);
  }
  const text = await resp.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const p = (data ?? {}) as { title?: string; detail?: string };
    const err = new ApiError(resp.status, p.title ?? resp.statusText, p.detail ?? String(text));
    // A token that stopped working (expired, user deleted): the shell logs out.
    if (resp.status === 401 && opts.token) {
      window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: err.message }));
    }
    throw err;
  }
  return data as T;
}

export interface LoginReply {
  token: string;
  role: string;
  expires_at: string;
}

export interface WhoAmI {
  name: string;
  role: string;
  permissions: string[];
}

export async function login(username: string, password: string, fetcher?: Fetcher): Promise<Session> {
  const reply = await request<LoginReply>("POST", "/api/v1/auth/login", {
    body: { username, password },
    fetcher,
  });
  const me = await request<WhoAmI>("GET", "/api/v1/auth/me", { token: reply.token, fetcher });
  return {
    token: reply.token,
    name: me.name,
    role: me.role,
    permissions: me.permissions,
    expiresAt: reply.expires_at,
  };
}

export function can(session: Session | null, permission: string): boolean {
  return !!session && session.permissions.includes(permission);
}

/** The API paths this server documents (its OpenAPI document): optional features such as
 * resharding jobs or switchover appear there once the server has them. */
export async function serverPaths(fetcher?: Fetcher): Promise<Record<string, string[]>> {
  const doc = await request<{ paths: Record<string, Record<string, unknown>> }>(
    "GET",
    "/api/v1/openapi.json",
    { fetcher },
  );
  const out: Record<string, string[]> = {};
  for (const [p, ops] of Object.entries(doc.paths ?? {})) out[p] = Object.keys(ops);
  return out;
}

export function hasOperation(paths: Record<string, string[]> | null, method: string, path: string): boolean {
  return !!paths && (paths[path] ?? []).includes(method.toLowerCase());
}
