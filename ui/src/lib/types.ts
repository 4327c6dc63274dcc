// Shapes of the sidecar's answers that the console reads.

export interface ServerView {
  role: string;
  address: string | null;
  healthy: boolean | null;
  reason: string | null;
  lag_bytes: number | null;
  lag_seconds: number | null;
  pool: { servers: number; active: number; idle: number; waiters: number; max_servers: number };
  queries_total: number;
}

export interface ShardView {
  name: string;
  status: string;
  weight: number;
  vnodes: number;
  ownership: number;
  healthy: boolean | null;
  servers: ServerView[];
  queries_total: number;
}

export interface RouterView {
  id: string;
  role: string;
  catalog_version: number | null;
  up_to_date: boolean;
  leader: boolean;
  proxy?: string;
  api?: string;
  updated_at?: string;
}

export interface Alert { severity: "critical" | "warning" | "info"; kind: string; subject: string; message: string }

export interface Overview {
  catalog_version: number;
  generated_at: string;
  store: { backend?: string; reachable?: boolean; since?: string; last_error?: string | null };
  shards: ShardView[];
  routers: RouterView[];
  leader: string | null;
  queries_total: number;
  errors_total: number;
  max_replica_lag: number;
  health_source: string;
  alerts: Alert[];
  fences: { lo: number; hi: number; job: string }[];
}

export interface Catalog {
  version: number;
  vnodes_per_shard: number;
  shards: { name: string; status: string; vnodes: number; ownership: number }[];
  ring: [number, string][];
  tables: Record<string, string>;
  fences: { lo: number; hi: number; job: string }[];
}

export interface Lookup {
  key: string;
  kind: string;
  canonical: string;
  token: number;
  shard: string;
  vnode_token: number;
  range: { lo: number; hi: number; wraps: boolean };
  fenced: { lo: number; hi: number; job: string } | null;
  catalog_version: number;
}

export interface AuditRecord {
  seq?: number;
  time: string;
  actor: string;
  role: string | null;
  action: string;
  target: string | null;
  result: string;
  status: number;
  detail: string | null;
  remote?: string | null;
}

export interface User { name: string; role: string; created_at?: string }
