import { describe, expect, it } from "vitest";
import { fireEvent, render, screen } from "@testing-library/react";
import { RingChart } from "../components/RingChart";

describe("ring chart", () => {
  const vnodes: [number, string][] = [[100, "a"], [2_000_000_000, "b"], [3_000_000_000, "a"]];

  it("draws one arc per vnode (the first in two pieces) and outlines moving ranges", () => {
    const { container } = render(
      <RingChart vnodes={vnodes} fences={[{ lo: 100, hi: 2_000_000_000, job: "job-7" }]}
        mark={{ token: 150, shard: "b" }} />);
    const arcs = container.querySelectorAll("path[data-owner]");
    expect(arcs).toHaveLength(4);
    expect([...arcs].map((p) => p.getAttribute("data-owner"))).toEqual(["a", "b", "a", "a"]);
    expect(container.querySelector("path.fence")?.getAttribute("data-job")).toBe("job-7");
    expect(screen.getByTestId("key-mark")).toBeTruthy();
  });

  it("says a vnode's range on hover", () => {
    const { container } = render(<RingChart vnodes={vnodes} fences={[]} />);
    fireEvent.mouseEnter(container.querySelectorAll("path[data-owner]")[1]);
    expect(container.querySelector("figcaption")!.textContent).toBe("vnode 1 (b): tokens 101 … 2000000000");
  });
});
