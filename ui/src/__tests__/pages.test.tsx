import { describe, expect, it } from "vitest";
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { App } from "../App";
import { Jobs } from "../pages/Jobs";
import { Overview } from "../pages/Overview";
import { Confirm } from "../components/Confirm";
import { ADMIN, OPENAPI, VIEWER, fakeServer, overviewDoc, session } from "./fakeServer";

describe("login", () => {
  it("logs in, asks who the user is, and keeps the token for this tab only", async () => {
    const server = fakeServer({
      "GET /api/v1/openapi.json": OPENAPI,
      "POST /api/v1/auth/login": (body) => {
        const b = body as { username: string; password: string };
        return b.password === "right-password"
          ? { body: { token: "t0k", role: "viewer", expires_at: "2999-01-01T00:00:00Z" } }
          : { status: 401, body: { title: "Unauthorized", status: 401, detail: "unknown user or wrong password" } };
      },
      "GET /api/v1/auth/me": { body: { name: "vera", role: "viewer", permissions: VIEWER } },
      "GET /api/v1/overview": { body: overviewDoc() },
    });
    render(<App />);
    fireEvent.change(screen.getByLabelText("User"), { target: { value: "vera" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "wrong" } });
    fireEvent.click(screen.getByRole("button", { name: "Log in" }));
    expect((await screen.findByRole("alert")).textContent).toContain("wrong password");

    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "right-password" } });
    fireEvent.click(screen.getByRole("button", { name: "Log in" }));
    await screen.findByRole("heading", { name: "Overview" });
    expect(server.calls.find((c) => c.path === "/api/v1/auth/me")?.auth).toBe("Bearer t0k");
    expect(JSON.parse(sessionStorage.getItem("pgshard.console.session")!).token).toBe("t0k");
    expect(document.cookie).toBe("");
    // A viewer is offered no Users page and no add-shard form.
    expect(screen.queryByRole("link", { name: "Users" })).toBeNull();
    await screen.findByTestId("shard-shard0");
    expect(screen.queryByRole("button", { name: "Add shard" })).toBeNull();
  });

  it("offers an admin the users page and the add-shard form", async () => {
    fakeServer({ "GET /api/v1/openapi.json": OPENAPI, "GET /api/v1/overview": { body: overviewDoc() } });
    sessionStorage.setItem("pgshard.console.session", JSON.stringify(session("admin", ADMIN)));
    render(<App />);
    await screen.findByTestId("shard-shard1");
    expect(screen.getByRole("link", { name: "Users" })).toBeTruthy();
    expect(screen.getByRole("button", { name: "Add shard" })).toBeTruthy();
    // No switchover/failover in this server's API document: said so, no buttons.
    expect(screen.getByTestId("failover-unavailable").textContent).toContain("not available");
    expect(screen.queryByRole("button", { name: /switchover|failover/i })).toBeNull();
  });
});

describe("roles", () => {
  it("offers an operator catalog changes but not the users page", async () => {
    fakeServer({ "GET /api/v1/openapi.json": OPENAPI, "GET /api/v1/overview": { body: overviewDoc() } });
    sessionStorage.setItem("pgshard.console.session", JSON.stringify(
      session("operator", ["audit:read", "catalog:read", "catalog:write"])));
    render(<App />);
    await screen.findByTestId("shard-shard0");
    expect(screen.getByRole("button", { name: "Add shard" })).toBeTruthy();
    expect(screen.queryByRole("link", { name: "Users" })).toBeNull();
    expect(screen.getByRole("link", { name: "Audit log" })).toBeTruthy();
  });

  it("tells an app user the console has nothing for that role", async () => {
    fakeServer({ "GET /api/v1/openapi.json": OPENAPI });
    sessionStorage.setItem("pgshard.console.session", JSON.stringify(session("app", ["execute"])));
    render(<App />);
    expect((await screen.findByRole("status")).textContent).toContain("has no console pages");
    expect(within(screen.getByRole("navigation")).queryAllByRole("link")).toHaveLength(0);
  });
});

describe("session end", () => {
  it("goes back to the login form, saying why, when the token stops working", async () => {
    fakeServer({ "GET /api/v1/openapi.json": OPENAPI,
      "GET /api/v1/overview": { status: 401, body: { title: "Unauthorized", status: 401,
        detail: "the token has expired; log in again" } } });
    sessionStorage.setItem("pgshard.console.session", JSON.stringify(session("admin", ADMIN)));
    render(<App />);
    expect((await screen.findByRole("status")).textContent).toContain("the token has expired");
    expect(screen.getByRole("button", { name: "Log in" })).toBeTruthy();
    expect(sessionStorage.getItem("pgshard.console.session")).toBeNull();
  });
});

describe("overview", () => {
  it("shows every shard's health and raises the server's alerts", async () => {
    const doc = overviewDoc({ alerts: [{ severity: "critical", kind: "primary", subject: "shard1",
      message: "shard shard1 has no healthy primary" }] });
    doc.shards[1].healthy = false;
    doc.shards[1].servers[0].healthy = false;
    fakeServer({ "GET /api/v1/overview": { body: doc } });
    render(<Overview session={session("viewer", VIEWER)} paths={{}} />);
    const s0 = await screen.findByTestId("shard-shard0");
    expect(s0.querySelector("[data-testid=shard-health]")!.textContent).toBe("healthy");
    const s1 = screen.getByTestId("shard-shard1");
    expect(s1.querySelector("[data-testid=shard-health]")!.textContent).toBe("unhealthy");
    expect(screen.getByRole("list", { name: "Alerts" }).textContent).toContain("no healthy primary");
  });

  it("adds a shard only after a confirmation that says what moves", async () => {
    const server = fakeServer({
      "GET /api/v1/overview": { body: overviewDoc() },
      "POST /api/v1/shards": { status: 201, body: { name: "spare", catalog_version: 4,
        message: "no sharded table holds rows: the shard owns its 256 vnodes now" } },
    });
    render(<Overview session={session("admin", ADMIN)} paths={{}} />);
    await screen.findByTestId("shard-shard0");
    fireEvent.change(screen.getByLabelText("Name"), { target: { value: "spare" } });
    fireEvent.change(screen.getByLabelText("Primary (postgresql:// URL)"),
      { target: { value: "postgresql://u:p@127.0.0.1:5999/app" } });
    fireEvent.click(screen.getByRole("button", { name: "Add shard" }));
    const dialog = await screen.findByRole("dialog");
    expect(dialog.textContent).toContain("33%");
    expect(server.calls.some((c) => c.method === "POST")).toBe(false);
    fireEvent.click(screen.getAllByRole("button", { name: "Add shard" }).find((b) => dialog.contains(b))!);
    expect((await screen.findByTestId("shard-added")).textContent).toContain("catalog version 4");
    const post = server.calls.find((c) => c.method === "POST")!;
    expect(post.body).toEqual({ name: "spare", primary: "postgresql://u:p@127.0.0.1:5999/app", replicas: [] });
  });
});

describe("jobs", () => {
  it("says the server has no jobs API when GET /api/v1/jobs is a 404", async () => {
    fakeServer({});
    render(<Jobs session={session("admin", ADMIN)} paths={{}} />);
    const note = await screen.findByRole("status");
    expect(note.textContent).toContain("not available on this server yet");
    expect(note.textContent).toContain("404");
    expect(screen.queryByRole("progressbar")).toBeNull();
  });

  it("shows each job's progress from the server", async () => {
    fakeServer({ "GET /api/v1/jobs": { body: { jobs: [
      { id: "j1", kind: "split", phase: "copy", rows_copied: 30, rows_total: 120 }] } } });
    render(<Jobs session={session("viewer", VIEWER)} paths={{}} />);
    const bar = (await screen.findByRole("progressbar")) as HTMLProgressElement;
    expect(bar.value).toBe(30);
    expect(bar.max).toBe(120);
    expect(screen.queryByRole("button", { name: /Cancel job/ })).toBeNull();
  });
});

describe("confirm dialog", () => {
  it("focuses Cancel and cancels on Escape", async () => {
    let cancelled = 0;
    render(<Confirm title="Really?" confirmLabel="Do it" onConfirm={() => {}} onCancel={() => cancelled++}>x</Confirm>);
    await waitFor(() => expect(document.activeElement?.textContent).toBe("Cancel"));
    await act(async () => {
      fireEvent.keyDown(screen.getByRole("dialog"), { key: "Escape" });
    });
    expect(cancelled).toBe(1);
  });
});
