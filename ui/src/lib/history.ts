// Short histories of polled numbers (replica lag, counters → rates), kept in the browser.

export const HISTORY_POINTS = 60;

export type Series = Record<string, number[]>;

/** The series with `value` appended under `key`, at most HISTORY_POINTS long. */
export function push(series: Series, key: string, value: number | null): Series {
  if (value === null || !Number.isFinite(value)) return series;
  const old = series[key] ?? [];
  const next = [...old, value].slice(-HISTORY_POINTS);
  return { ...series, [key]: next };
}

/** Per-second rate between two cumulative counter readings (null when unknown or reset). */
export function perSecond(prev: { value: number; at: number } | undefined, value: number, at: number): number | null {
  if (!prev || at <= prev.at || value < prev.value) return null;
  return (value - prev.value) / ((at - prev.at) / 1000);
}
