// A stand-in for the sidecar in component tests: answers by "METHOD path" and records calls.
import { vi } from "vitest";

export type Answer = { status?: number; body: unknown };
export type Routes = Record<string, Answer | ((body: unknown) => Answer)>;

export function fakeServer(routes: Routes) {
  const calls: { method: string; path: string; body: unknown; auth: string | null }[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const path = String(input);
    const method = (init?.method ?? "GET").toUpperCase();
    const body = init?.body ? JSON.parse(String(init.body)) : undefined;
    const headers = (init?.headers ?? {}) as Record<string, string>;
    calls.push({ method, path, body, auth: headers.Authorization ?? null });
    const bare = path.split("?")[0];
    const route = routes[`${method} ${path}`] ?? routes[`${method} ${bare}`];
    if (!route) {
      return new Response(JSON.stringify({ type: "about:blank", title: "Not Found", status: 404,
        detail: `no such endpoint: ${method} ${bare}` }), { status: 404,
        headers: { "Content-Type": "application/problem+json" } });
    }
    const a = typeof route === "function" ? route(body) : route;
    return new Response(JSON.stringify(a.body), { status: a.status ?? 200,
      headers: { "Content-Type": a.status && a.status >= 400 ? "application/problem+json" : "application/json" } });
  });
  vi.stubGlobal("fetch", fn);
  return { calls, fn };
}

export const OPENAPI = { body: { paths: { "/api/v1/shards": { get: {}, post: {} } } } };

export function session(role: string, permissions: string[]) {
  return { token: `tok-${role}`, name: `u-${role}`, role, permissions,
    expiresAt: new Date(Date.now() + 3600_000).toISOString() };
}

export const ADMIN = ["audit:read", "catalog:read", "catalog:write", "execute", "users:admin"];
export const VIEWER = ["audit:read", "catalog:read"];

export function overviewDoc(overrides: Record<string, unknown> = {}) {
  const server = (role: string, healthy: boolean, lag: number | null) => ({
    role, address: `127.0.0.1:${role === "primary" ? 5432 : 5433}`, healthy, reason: healthy ? null : "down",
    lag_bytes: lag, lag_seconds: lag === null ? null : 0,
    pool: { servers: 1, active: 0, idle: 1, waiters: 0, max_servers: 4 }, queries_total: 10 });
  return {
    catalog_version: 3, generated_at: "2026-12-01T00:00:00Z",
    store: { backend: "sqlite", reachable: true },
    shards: [
      { name: "shard0", status: "active", weight: 1, vnodes: 256, ownership: 0.5, healthy: true,
        servers: [server("primary", true, null), server("replica:0", true, 0)], queries_total: 20 },
      { name: "shard1", status: "active", weight: 1, vnodes: 256, ownership: 0.5, healthy: true,
        servers: [server("primary", true, null), server("replica:0", true, 128)], queries_total: 20 },
    ],
    routers: [{ id: "node-a", role: "all", catalog_version: 3, up_to_date: true, leader: true }],
    leader: "node-a", queries_total: 40, errors_total: 0, max_replica_lag: 10,
    health_source: "replica-monitor", alerts: [], fences: [], ...overrides,
  };
}
