// A tiny line chart of recent values, with a text equivalent for screen readers.
export function Sparkline({ values, label, width = 90, height = 22 }: {
  values: number[];
  label: string;
  width?: number;
  height?: number;
}) {
  if (values.length < 2) {
    return <span className="muted" aria-label={`${label}: not enough history yet`}>·</span>;
  }
  const max = Math.max(...values, 1e-9);
  const min = Math.min(...values, 0);
  const span = max - min || 1;
  const pts = values
    .map((v, i) => {
      const x = (i / (values.length - 1)) * (width - 2) + 1;
      const y = height - 1 - ((v - min) / span) * (height - 2);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
  return (
    <svg className="sparkline" width={width} height={height} role="img"
      aria-label={`${label}: last ${values.length} samples, latest ${values[values.length - 1]}, max ${max}`}>
      <polyline points={pts} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}
