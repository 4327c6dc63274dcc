import { describe, expect, it } from "vitest";
import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { Overview } from "../pages/Overview";
import { ADMIN, VIEWER, fakeServer, overviewDoc, session } from "./fakeServer";

const OPERATOR = ["audit:read", "catalog:read", "catalog:write"];
const HA_PATHS = {
  "/api/v1/shards/{name}/switchover": ["post"],
  "/api/v1/shards/{name}/failover": ["post"],
  "/api/v1/shards/{name}/rejoin": ["post"],
};

/** The overview with shard1's HA view: a sync replica, a fenced old primary, a failover. */
function haDoc() {
  const doc = overviewDoc();
  (doc.shards[1] as Record<string, unknown>).ha = {
    servers: [
      { dsn: "127.0.0.1:5432", role: "primary", healthy: true, lag_bytes: 0, lag_seconds: 0, sync: null },
      { dsn: "127.0.0.1:5433", role: "replica", healthy: true, lag_bytes: 128, lag_seconds: 0.2, sync: true },
      { dsn: "127.0.0.1:5999", role: "fenced", healthy: null, lag_bytes: null, lag_seconds: null, sync: false },
    ],
    sync_quorum: 1,
    last_failover: { at: "2026-12-01T10:00:00Z", kind: "failover", reason: "primary unreachable",
      from: "127.0.0.1:5999", to: "127.0.0.1:5432", seconds: 3.2 },
  };
  return doc;
}

describe("failover and switchover", () => {
  it("shows per-server sync, the fenced old primary and the last failover", async () => {
    fakeServer({ "GET /api/v1/overview": { body: haDoc() } });
    render(<Overview session={session("viewer", VIEWER)} paths={HA_PATHS} />);
    const card = await screen.findByTestId("shard-shard1");
    expect(card.textContent).toContain("synchronous replication (ANY 1)");
    expect(within(card).getAllByTestId("server-sync").map((c) => c.textContent)).toEqual(["—", "yes"]);
    expect(within(card).getByTestId("fenced-server").textContent).toContain("127.0.0.1:5999");
    expect(within(card).getByTestId("last-failover").textContent).toBe(
      "Last failover: 2026-12-01T10:00:00Z, 127.0.0.1:5999 → 127.0.0.1:5432 in 3.2 s (primary unreachable).");
    // A viewer may change nothing.
    expect(within(card).queryByRole("button")).toBeNull();
    // shard0 has no HA view: no Sync column, nothing made up.
    expect(within(screen.getByTestId("shard-shard0")).queryByTestId("server-sync")).toBeNull();
    expect(within(screen.getByTestId("shard-shard0")).queryByTestId("last-failover")).toBeNull();
  });

  it("switches over to the chosen replica after a confirmation, and says what happened", async () => {
    const server = fakeServer({
      "GET /api/v1/overview": { body: haDoc() },
      "POST /api/v1/shards/shard1/switchover": { body: { name: "shard1", primary: "postgresql://app:***@127.0.0.1:5433/app",
        catalog_version: 9, pause_seconds: 0.41, old_primary: "127.0.0.1:5432" } },
    });
    render(<Overview session={session("operator", OPERATOR)} paths={HA_PATHS} />);
    const card = await screen.findByTestId("shard-shard1");
    fireEvent.click(within(card).getByRole("button", { name: "Switchover shard1" }));
    const dialog = await screen.findByRole("dialog");
    expect(dialog.textContent).toContain("None fails");
    const select = within(dialog).getByLabelText("Replica to promote") as HTMLSelectElement;
    expect([...select.options].map((o) => o.textContent)).toEqual([
      "the manager's choice (the most advanced synchronous replica)",
      "127.0.0.1:5433 (healthy, synchronous, lag 200 ms)"]);
    fireEvent.change(select, { target: { value: "127.0.0.1:5433" } });
    expect(server.calls.some((c) => c.method === "POST")).toBe(false);
    fireEvent.click(within(dialog).getByRole("button", { name: "Switch over" }));
    expect((await within(card).findByTestId("ha-result")).textContent).toBe(
      "Switchover of shard1 done: the primary is now 127.0.0.1:5433 (was 127.0.0.1:5432), " +
      "catalog version 9; statements were held 410 ms.");
    const post = server.calls.find((c) => c.method === "POST")!;
    expect(post.body).toEqual({ to: "127.0.0.1:5433" });
  });

  it("shows the server's problem when a failover is refused", async () => {
    const server = fakeServer({
      "GET /api/v1/overview": { body: overviewDoc() },
      "POST /api/v1/shards/shard0/failover": { status: 503, body: { title: "Service Unavailable", status: 503,
        detail: "this process is not the active manager (it does not hold the leader lease); send the request to the leader" } },
    });
    render(<Overview session={session("admin", ADMIN)} paths={HA_PATHS} />);
    const card = await screen.findByTestId("shard-shard0");
    fireEvent.click(within(card).getByRole("button", { name: "Failover shard0" }));
    const dialog = await screen.findByRole("dialog");
    // No HA view (no quorum known): the text warns of asynchronous replication's loss.
    expect(dialog.textContent).toContain("commits the replica had not received are lost");
    expect(dialog.textContent).toContain("fenced (never routed to again)");
    // The replicas come from the overview's own server list.
    expect(within(dialog).getAllByRole("option").map((o) => o.getAttribute("value"))).toEqual(["", "127.0.0.1:5433"]);
    fireEvent.click(within(dialog).getByRole("button", { name: "Fail over now" }));
    const alert = await within(card).findByRole("alert");
    expect(alert.textContent).toBe("Service Unavailable (503): this process is not the active manager " +
      "(it does not hold the leader lease); send the request to the leader");
    expect(server.calls.find((c) => c.method === "POST")!.body).toEqual({});
  });

  it("rejoins a fenced old primary after a confirmation", async () => {
    const server = fakeServer({
      "GET /api/v1/overview": { body: haDoc() },
      "POST /api/v1/shards/shard1/rejoin": { body: { name: "shard1", primary: "p", catalog_version: 10, rejoined: "127.0.0.1:5999" } },
    });
    render(<Overview session={session("operator", OPERATOR)} paths={HA_PATHS} />);
    const card = await screen.findByTestId("shard-shard1");
    fireEvent.click(within(card).getByRole("button", { name: "Rejoin 127.0.0.1:5999" }));
    fireEvent.click(within(await screen.findByRole("dialog")).getByRole("button", { name: "Rejoin" }));
    await waitFor(() => expect(server.calls.some((c) => c.method === "POST")).toBe(true));
    const post = server.calls.find((c) => c.method === "POST")!;
    expect([post.path, post.body]).toEqual(["/api/v1/shards/shard1/rejoin", { dsn: "127.0.0.1:5999" }]);
  });

  it("offers no buttons when the server's API document has no such operation", async () => {
    fakeServer({ "GET /api/v1/overview": { body: haDoc() } });
    render(<Overview session={session("admin", ADMIN)} paths={{}} />);
    const card = await screen.findByTestId("shard-shard1");
    expect(within(card).queryByRole("button", { name: /Switchover|Failover|Rejoin/ })).toBeNull();
    expect(screen.getByTestId("failover-unavailable").textContent).toContain("not available");
  });

  it("keeps Tab inside the confirmation, through the replica choice", async () => {
    fakeServer({ "GET /api/v1/overview": { body: haDoc() } });
    render(<Overview session={session("admin", ADMIN)} paths={HA_PATHS} />);
    fireEvent.click(within(await screen.findByTestId("shard-shard1")).getByRole("button", { name: "Switchover shard1" }));
    const dialog = await screen.findByRole("dialog");
    const select = within(dialog).getByLabelText("Replica to promote");
    select.focus();
    fireEvent.keyDown(dialog, { key: "Tab", shiftKey: true });
    expect(document.activeElement?.textContent).toBe("Switch over");
  });
});
