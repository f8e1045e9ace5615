// uPlot islands for the job page: one chart per container, rebuilt when its set of series changes.
// Each container gets data-points=N (the number of x positions drawn).

const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#003f5c", "#a05195",
];

const HEIGHT = 220;
// Whole steps only on the x axis: 1, 2, 5, 10, 20, 50, ...
const STEP_INCRS = [];
for (let e = 0; e <= 9; e += 1) for (const m of [1, 2, 5]) STEP_INCRS.push(m * 10 ** e);

/** Axis labels with enough significant digits to tell ticks apart (0.0001 vs 0.00015). */
export function compactNumber(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3 || a >= 1e6) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

/** A chart bound to ``container``; ``update(store)`` redraws from ``{name: {steps, values}}``. */
export class Chart {
  constructor(container, { select, showPoints = false, emptyText = "No points yet." }) {
    this.container = container;
    this.select = select; // (name) -> bool
    this.showPoints = showPoints;
    this.emptyText = emptyText;
    this.plot = null;
    this.names = "";
    this.empty = document.createElement("p");
    this.empty.className = "chart-empty muted";
    this.empty.textContent = emptyText;
    container.append(this.empty);
    container.dataset.points = "0";
  }

  available() {
    return typeof window.uPlot === "function";
  }

  width() {
    return Math.max(240, Math.floor(this.container.clientWidth || 320));
  }

  update(store) {
    const names = Object.keys(store).filter((n) => this.select(n)).sort();
    const steps = new Set();
    for (const n of names) for (const s of store[n].steps) steps.add(s);
    const xs = [...steps].sort((a, b) => a - b);
    const data = [xs];
    for (const n of names) {
      const byStep = new Map();
      const { steps: ss, values: vs } = store[n];
      for (let i = 0; i < ss.length; i += 1) {
        const v = vs[i];
        byStep.set(ss[i], typeof v === "number" && Number.isFinite(v) ? v : null);
      }
      data.push(xs.map((x) => (byStep.has(x) ? byStep.get(x) : null)));
    }
    this.container.dataset.points = String(xs.length);
    this.empty.hidden = xs.length > 0;
    if (!xs.length) return;
    if (!this.available()) {
      this.empty.hidden = false;
      this.empty.textContent = `${xs.length} points (the chart library did not load).`;
      return;
    }
    const key = names.join("\n");
    if (this.plot && key === this.names) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.names = key;
    const opts = {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: false } },
      axes: [
        { label: "step", incrs: STEP_INCRS, values: (u, ticks) => ticks.map((t) => String(t)) },
        { size: 64, values: (u, ticks) => ticks.map(compactNumber) },
      ],
      series: [
        { label: "step" },
        ...names.map((n, i) => ({
          label: n,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: true,
          points: { show: this.showPoints, size: 6 },
        })),
      ],
      legend: { live: true },
    };
    this.plot = new window.uPlot(opts, data, this.container);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: HEIGHT });
  }
}
