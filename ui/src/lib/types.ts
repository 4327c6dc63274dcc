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
  ha?: HaView;
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

// High availability, as GET /api/v1/shards/{name} and the overview's `ha` give it. Every
// field may be absent on a server that does not have it yet: the console shows what is there.
export interface HaServer {
  dsn: string;
  role: string;                 // primary | replica | fenced
  healthy?: boolean | null;
  reason?: string | null;
  lag_bytes?: number | null;
  lag_seconds?: number | null;
  sync?: boolean | null;
}

export interface LastFailover {
  at: string;
  kind: string;                 // failover | switchover
  reason: string;
  from: string;
  to: string;
  seconds: number;
}

export interface HaView {
  servers?: HaServer[];
  sync_quorum?: number;
  last_failover?: LastFailover | null;
}

export interface PrimaryChange {
  name: string;
  primary: string;
  catalog_version: number;
  pause_seconds?: number;
  old_primary?: string;
  rejoined?: string;
  last_failover?: LastFailover | null;
}

// Resharding jobs (GET /api/v1/jobs, /api/v1/jobs/{id}).
export interface Job {
  id: string;
  kind?: string;
  source?: string | null;
  target?: string;
  state?: string;               // pending | running | done | failed | cancelled
  phase?: string | null;        // schema | copy | catchup | fence | verify | cleanup
  progress?: { rows_copied?: number; rows_total?: number; lag_bytes?: number };
  rows_copied?: number;
  rows_total?: number;
  lag_bytes?: number;
  write_pause_ms?: number | null;
  write_pause_seconds?: number | null;
  error?: string | null;
  cancel_requested?: boolean;
  moves?: number;
  sources?: string[];
  created_at?: string;
  updated_at?: string;
}

export interface Move { lo: number; hi: number; src: string; dst: string }

export interface MovingJob {
  id: string;
  kind: string;
  state: string;
  phase: string | null;
  source: string | null;
  target: string;
  share: number;
  moves: Move[];
}

export interface JobPreview {
  kind: string;
  source: string | null;
  target: string;
  sources: string[];
  ranges: number;
  share: number;
  by_source: Record<string, number>;
  source_ownership: Record<string, number>;
  tables: string[];
  rows_estimate: number | null;
  rows_by_source: Record<string, { rows: number | null; live_rows: number | null; error: string | null }>;
  busy: { job: string; kind: string; state: string; shards: string[] } | null;
  catalog_version: number;
  moves: Move[];
}

export interface ShardSummary { name: string; status: string; vnodes: number; ownership: number }
