import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export type Series = { label: string; xs: number[]; ys: number[] };

const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

/** Series with different x values merged onto one x axis (nulls where absent). */
export function align(series: Series[]): uPlot.AlignedData {
  const xs = Array.from(new Set(series.flatMap((s) => s.xs))).sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const cols = series.map((s) => {
    const col: (number | null)[] = new Array(xs.length).fill(null);
    s.xs.forEach((x, i) => (col[index.get(x) ?? 0] = s.ys[i]));
    return col;
  });
  return [xs, ...cols] as uPlot.AlignedData;
}

/** A line chart over steps (uPlot), resized with its box, redrawn when data changes. */
export function LineChart({ title, series, xLabel = 'step' }: { title: string; series: Series[]; xLabel?: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const labels = series.map((s) => s.label).join('\u0000');

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue('--fg').trim() || '#111';
    const grid = css.getPropertyValue('--line').trim() || '#ddd';
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
    const opts: uPlot.Options = {
      title,
      width: Math.max(240, el.clientWidth),
      height: 220,
      scales: { x: { time: false } },
      axes: [{ ...axis, label: xLabel }, { ...axis }],
      series: [
        { label: xLabel },
        ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true })),
      ],
      legend: { show: series.length > 1 },
    };
    const u = new uPlot(opts, align(series), el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(240, el.clientWidth), height: 220 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt when the set of series changes; new points only call setData.
  }, [title, labels]);

  useEffect(() => {
    plot.current?.setData(align(series));
  }, [series]);

  const last = series.length === 1 ? series[0].ys[series[0].ys.length - 1] : undefined;
  return (
    <figure class="chart" data-testid={`chart-${title}`} data-points={series.reduce((n, s) => n + s.xs.length, 0)}>
      <div ref={box} />
      {last !== undefined && <figcaption class="muted small">last: {last}</figcaption>}
    </figure>
  );
}
