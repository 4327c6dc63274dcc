import { describe, expect, it } from "vitest";
import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { Jobs } from "../pages/Jobs";
import { Ring } from "../pages/Ring";
import { colours } from "../lib/ring";
import { ADMIN, VIEWER, fakeServer, session } from "./fakeServer";

const OPERATOR = ["audit:read", "catalog:read", "catalog:write"];
const JOB_PATHS = {
  "/api/v1/jobs": ["get", "post"],
  "/api/v1/jobs/{id}": ["get"],
  "/api/v1/jobs/{id}/cancel": ["post"],
};
const SHARDS = { body: { shards: [
  { name: "shard0", status: "active", vnodes: 256, ownership: 0.5 },
  { name: "shard1", status: "active", vnodes: 256, ownership: 0.5 },
  { name: "spare", status: "active", vnodes: 0, ownership: 0 },
] } };
const PREVIEW = {
  kind: "split", source: "shard0", target: "spare", sources: ["shard0"], ranges: 128,
  share: 0.25, by_source: { shard0: 0.25 }, source_ownership: { shard0: 0.5 }, tables: ["items"],
  rows_estimate: 1234, rows_by_source: { shard0: { rows: 1234, live_rows: 2468, error: null } },
  busy: null, catalog_version: 4, moves: [],
};
const job = (over: Record<string, unknown>) => ({
  id: "j1", kind: "split", source: "shard0", target: "spare", state: "running", phase: "copy",
  progress: { rows_copied: 30, rows_total: 120, lag_bytes: 4096 }, write_pause_ms: null,
  error: null, cancel_requested: false, moves: 128, sources: ["shard0"], ...over });

function row(id: string) {
  return screen.getByTestId(`job-${id}`);
}

describe("jobs page", () => {
  it("follows a running job's progress until it is done, without a reload", async () => {
    let calls = 0;
    fakeServer({ "GET /api/v1/jobs": () => {
      calls++;
      return { body: { jobs: [calls <= 2 ? job({})
        : job({ state: "done", phase: null, progress: { rows_copied: 120, rows_total: 120, lag_bytes: 0 },
          write_pause_ms: 350 })] } };
    } });
    render(<Jobs session={session("viewer", VIEWER)} paths={JOB_PATHS} />);
    const bar = (await screen.findByRole("progressbar", { name: "rows copied for job j1" })) as HTMLProgressElement;
    expect([bar.value, bar.max]).toEqual([30, 120]);
    expect(within(row("j1")).getByTestId("job-state").textContent).toBe("running");
    expect(within(row("j1")).getByTestId("job-phase").textContent).toBe("copy");
    expect(row("j1").textContent).toContain("4.0 KiB");
    // An active job is polled every second: a later answer shows it done.
    await waitFor(() => expect(within(row("j1")).getByTestId("job-state").textContent).toBe("done"),
      { timeout: 3000 });
    expect(row("j1").textContent).toContain("120 / 120 rows");
    expect(row("j1").textContent).toContain("350 ms");
    expect(within(row("j1")).queryByRole("button")).toBeNull();
  });

  it("shows a cancelled or failed job as rolled back, with no bar", async () => {
    fakeServer({ "GET /api/v1/jobs": { body: { jobs: [
      job({ id: "j1", state: "failed", phase: null, error: "verify failed",
        progress: { rows_copied: 40, rows_total: 90, lag_bytes: 0 } }),
      job({ id: "j2", state: "cancelled", phase: null, progress: { rows_copied: 0, rows_total: 0, lag_bytes: 0 } }),
    ] } } });
    render(<Jobs session={session("viewer", VIEWER)} paths={JOB_PATHS} />);
    const failed = await screen.findByTestId("job-j1");
    expect(within(failed).getByTestId("job-rows").textContent).toBe("rolled back (40 rows had been copied)");
    expect(within(failed).getByTestId("job-state").className).toBe("bad");
    expect(within(failed).getByTestId("job-error").textContent).toBe("verify failed");
    expect(within(row("j2")).getByTestId("job-rows").textContent).toBe("rolled back");
    expect(screen.queryByRole("progressbar")).toBeNull();
  });

  it("offers a viewer no form and no cancel", async () => {
    fakeServer({ "GET /api/v1/jobs": { body: { jobs: [job({})] } } });
    render(<Jobs session={session("viewer", VIEWER)} paths={JOB_PATHS} />);
    await screen.findByTestId("job-j1");
    expect(screen.queryByRole("button", { name: /Cancel job/ })).toBeNull();
    expect(screen.queryByRole("heading", { name: "Start a resharding job" })).toBeNull();
  });

  it("starts a split only after a confirmation that says what moves", async () => {
    const server = fakeServer({
      "GET /api/v1/jobs": { body: { jobs: [] } },
      "GET /api/v1/shards": SHARDS,
      "GET /api/v1/ring/plan": { body: PREVIEW },
      "POST /api/v1/jobs": { status: 202, body: job({ id: "j9", state: "pending", phase: "schema" }) },
    });
    render(<Jobs session={session("operator", OPERATOR)} paths={JOB_PATHS} />);
    expect(await screen.findByText("No jobs.")).toBeTruthy();
    // The form offers what the planner accepts: serving sources, an empty target.
    await waitFor(() => expect((screen.getByLabelText("Target shard") as HTMLSelectElement).value).toBe("spare"));
    const sources = within(screen.getByLabelText("Source shard")).getAllByRole("option").map((o) => o.textContent);
    expect(sources).toEqual(["shard0", "shard1"]);
    fireEvent.click(screen.getByRole("button", { name: "Start split…" }));
    const dialog = await screen.findByRole("dialog");
    const plan = server.calls.find((c) => c.path.startsWith("/api/v1/ring/plan"))!;
    expect(Object.fromEntries(new URL(plan.path, "http://x").searchParams)).toEqual(
      { kind: "split", source: "shard0", target: "spare" });
    expect(dialog.textContent).toContain("128 token ranges, 25.0% of the token space, move from shard0 to spare");
    expect(dialog.textContent).toContain("50.0% of what shard0 owns");
    expect(dialog.textContent).toContain("About 1234 rows of 1 sharded table");
    expect(server.calls.some((c) => c.method === "POST")).toBe(false);
    fireEvent.click(within(dialog).getByRole("button", { name: "Start split" }));
    expect((await screen.findByTestId("job-started")).textContent).toContain("Started job j9");
    const post = server.calls.find((c) => c.method === "POST")!;
    expect(post.path).toBe("/api/v1/jobs");
    expect(post.body).toEqual({ kind: "split", source: "shard0", target: "spare" });
    expect(post.auth).toBe("Bearer tok-operator");
  });

  it("a rebalance names no source; a refused plan is shown and nothing starts", async () => {
    const server = fakeServer({
      "GET /api/v1/jobs": { body: { jobs: [] } },
      "GET /api/v1/shards": SHARDS,
      "GET /api/v1/ring/plan": { status: 409, body: { title: "Conflict", status: 409,
        detail: 'shard "spare" already owns vnodes' } },
    });
    render(<Jobs session={session("admin", ADMIN)} paths={JOB_PATHS} />);
    await screen.findByText("No jobs.");
    fireEvent.change(screen.getByLabelText("Kind"), { target: { value: "rebalance" } });
    expect(screen.queryByLabelText("Source shard")).toBeNull();
    await waitFor(() => expect((screen.getByLabelText("Target shard") as HTMLSelectElement).value).toBe("spare"));
    fireEvent.click(screen.getByRole("button", { name: "Start rebalance…" }));
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toBe('Conflict (409): shard "spare" already owns vnodes');
    expect(screen.queryByRole("dialog")).toBeNull();
    const plan = server.calls.find((c) => c.path.startsWith("/api/v1/ring/plan"))!;
    expect(new URL(plan.path, "http://x").searchParams.has("source")).toBe(false);
    expect(server.calls.some((c) => c.method === "POST")).toBe(false);
  });

  it("cancels a job after a confirmation, and shows the server's refusal", async () => {
    let cancels = 0;
    const server = fakeServer({
      "GET /api/v1/jobs": { body: { jobs: [job({})] } },
      "GET /api/v1/shards": SHARDS,
      "POST /api/v1/jobs/j1/cancel": () => (++cancels === 1
        ? { status: 409, body: { title: "Conflict", status: 409, detail: "job j1 already flipped ownership; it can only finish" } }
        : { status: 202, body: job({ cancel_requested: true }) }),
    });
    render(<Jobs session={session("operator", OPERATOR)} paths={JOB_PATHS} />);
    fireEvent.click(await screen.findByRole("button", { name: "Cancel job j1" }));
    const dialog = await screen.findByRole("dialog");
    expect(dialog.textContent).toContain("rolled back");
    fireEvent.click(within(dialog).getByRole("button", { name: "Cancel the job" }));
    expect((await screen.findByRole("alert")).textContent).toContain("(409): job j1 already flipped ownership");
    fireEvent.click(screen.getByRole("button", { name: "Cancel job j1" }));
    fireEvent.click(within(await screen.findByRole("dialog")).getByRole("button", { name: "Cancel the job" }));
    await waitFor(() => expect(cancels).toBe(2));
    await waitFor(() => expect(screen.queryByRole("alert")).toBeNull());
    expect(server.calls.filter((c) => c.method === "POST").map((c) => c.path))
      .toEqual(["/api/v1/jobs/j1/cancel", "/api/v1/jobs/j1/cancel"]);
  });

  it("says so when the server has no shards to choose from for a split", async () => {
    fakeServer({ "GET /api/v1/jobs": { body: { jobs: [] } },
      "GET /api/v1/shards": { body: { shards: SHARDS.body.shards.slice(0, 2) } } });
    render(<Jobs session={session("admin", ADMIN)} paths={JOB_PATHS} />);
    expect(await screen.findByText(/No shard owns nothing yet/)).toBeTruthy();
    expect((screen.getByRole("button", { name: "Start split…" }) as HTMLButtonElement).disabled).toBe(true);
  });
});

describe("job detail", () => {
  it("shows the phase, progress, error and the ranges the job moves", async () => {
    fakeServer({
      "GET /api/v1/jobs/j1": { body: job({ phase: "fence", error: "verify: table items range (1, 9] differs" }) },
      "GET /api/v1/ring/moves": { body: { jobs: [{ id: "j1", kind: "split", state: "running", phase: "fence",
        source: "shard0", target: "spare", share: 0.125,
        moves: [{ lo: 10, hi: 500, src: "shard0", dst: "spare" }, { lo: 900, hi: 1000, src: "shard0", dst: "spare" }] }] } },
    });
    render(<Jobs session={session("viewer", VIEWER)} paths={JOB_PATHS} jobId="j1" />);
    expect((await screen.findByRole("heading", { level: 1 })).textContent).toBe("Job j1");
    const phases = await screen.findByRole("list", { name: "Phases" });
    const current = within(phases).getAllByRole("listitem").find((li) => li.getAttribute("aria-current") === "step")!;
    expect(current.textContent).toBe("fence");
    expect(within(phases).getAllByRole("listitem").filter((li) => li.className === "past")).toHaveLength(3);
    expect(screen.getByRole("alert").textContent).toContain("range (1, 9] differs");
    expect(await screen.findByText(/2 moving ranges \(12.5% of the token space/)).toBeTruthy();
    expect(screen.getByRole("cell", { name: "(10, 500]" })).toBeTruthy();
  });

  it("says what the server answered for a job that does not exist", async () => {
    fakeServer({ "GET /api/v1/jobs/nope": { status: 404, body: { title: "Not Found", status: 404,
      detail: 'job "nope" does not exist' } } });
    render(<Jobs session={session("viewer", VIEWER)} paths={JOB_PATHS} jobId="nope" />);
    expect((await screen.findByRole("alert")).textContent).toBe('Not Found (404): job "nope" does not exist');
  });
});

describe("ring during a job", () => {
  it("highlights the ranges an unfinished job moves", async () => {
    fakeServer({
      "GET /api/v1/catalog": { body: { version: 5, vnodes_per_shard: 2,
        shards: [{ name: "shard0", status: "active", vnodes: 2, ownership: 1 }, { name: "spare", status: "active", vnodes: 0, ownership: 0 }],
        ring: [[1000, "shard0"], [3_000_000_000, "shard0"]], tables: {}, fences: [] } },
      "GET /api/v1/ring/moves": { body: { jobs: [{ id: "j1", kind: "split", state: "running", phase: "copy",
        source: "shard0", target: "spare", share: 0.25, moves: [{ lo: 1000, hi: 1_074_742_823, src: "shard0", dst: "spare" }] }] } },
    });
    const { container } = render(<Ring session={session("viewer", VIEWER)} />);
    expect((await screen.findByTestId("moving-jobs")).textContent).toContain("moves 1 range, 25.0% of the token space");
    const arc = container.querySelector("path.moving")!;
    expect([arc.getAttribute("data-job"), arc.getAttribute("data-src"), arc.getAttribute("data-dst")])
      .toEqual(["j1", "shard0", "spare"]);
    // In the destination's colour, which a shard owning no vnode yet has as well.
    expect(arc.getAttribute("fill")).toBe(colours(["shard0", "spare"]).spare);
    expect(arc.getAttribute("fill")).not.toBe(colours(["shard0", "spare"]).shard0);
    fireEvent.mouseEnter(arc);
    expect(container.querySelector("figcaption")!.textContent).toBe("moving shard0 → spare (job j1): tokens 1001 … 1074742823");
  });

  it("draws no highlight when the server has no moves endpoint", async () => {
    fakeServer({ "GET /api/v1/catalog": { body: { version: 5, vnodes_per_shard: 1,
      shards: [{ name: "shard0", status: "active", vnodes: 1, ownership: 1 }], ring: [[1000, "shard0"]], tables: {}, fences: [] } } });
    const { container } = render(<Ring session={session("viewer", VIEWER)} />);
    await waitFor(() => expect(container.querySelectorAll("path[data-owner]").length).toBe(2));
    expect(container.querySelector("path.moving")).toBeNull();
    expect(screen.queryByTestId("moving-jobs")).toBeNull();
  });
});
