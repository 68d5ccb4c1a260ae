// The live score chart (uPlot, vendored): the smoothed z-score and the threshold over the last
// minutes, events shaded. Frames closer than BUCKET_S in time share one point holding their highest
// z (a peak is never lost), so five minutes of a 30 fps camera are 1500 points; the chart redraws at
// most twice a second.

const REDRAW_MS = 500;
const BUCKET_S = 0.2;

function cssVar(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

export class ScoreChart {
  constructor(el, { windowSeconds = 300, maxPoints = 3000 } = {}) {
    this.el = el;
    this.windowSeconds = windowSeconds;
    this.maxPoints = maxPoints;
    this.xs = [];
    this.z = [];
    this.threshold = [];
    this.events = new Map(); // id -> {start, end} (seconds; end null while open)
    this.dirty = false;
    this.plot = null;
    this.build();
    this.timer = setInterval(() => this.flush(), REDRAW_MS);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(el);
  }

  build() {
    const fg = cssVar("--fg-muted", "#888");
    const grid = cssVar("--grid", "rgba(128,128,128,0.2)");
    const shade = cssVar("--event-shade", "rgba(230,57,70,0.18)");
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const events = this.events;
    this.plot?.destroy();
    this.plot = new window.uPlot({
      width: Math.max(this.el.clientWidth, 200),
      height: 240,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [axis, { ...axis, label: "smoothed z" }],
      series: [
        {},
        { label: "smoothed z", stroke: cssVar("--accent", "#2a9d8f"), width: 2, points: { show: false } },
        { label: "threshold", stroke: cssVar("--danger", "#e63946"), width: 1.5, dash: [6, 4], points: { show: false } },
      ],
      hooks: {
        drawClear: [(u) => {
          const { ctx } = u;
          ctx.save();
          ctx.fillStyle = shade;
          const last = this.xs.at(-1) ?? 0;
          for (const { start, end } of events.values()) {
            const x0 = Math.max(u.valToPos(start, "x", true), u.bbox.left);
            const x1 = Math.min(u.valToPos(end ?? last, "x", true), u.bbox.left + u.bbox.width);
            if (x1 > x0) ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height);
          }
          ctx.restore();
        }],
      },
    }, [this.xs, this.z, this.threshold], this.el);
    this.el.setAttribute("role", "img");
  }

  fit() {
    if (this.plot && this.el.clientWidth) this.plot.setSize({ width: this.el.clientWidth, height: 240 });
  }

  add(result) {
    if (result.smoothed_score === null || result.smoothed_score === undefined) return;
    const t = result.timestamp;
    if (this.xs.length && t < this.xs.at(-1)) this.clear(); // another clip (time went back): start over
    const last = this.xs.length - 1;
    if (last >= 0 && t - this.xs[last] < BUCKET_S) {
      this.z[last] = Math.max(this.z[last], result.smoothed_score);
      this.threshold[last] = result.threshold;
      this.dirty = true;
      return;
    }
    this.xs.push(t);
    this.z.push(result.smoothed_score);
    this.threshold.push(result.threshold);
    const oldest = t - this.windowSeconds;
    let drop = 0;
    while (drop < this.xs.length && (this.xs[drop] < oldest || this.xs.length - drop > this.maxPoints)) drop += 1;
    if (drop) {
      this.xs.splice(0, drop);
      this.z.splice(0, drop);
      this.threshold.splice(0, drop);
    }
    this.dirty = true;
  }

  clear() {
    this.xs.length = this.z.length = this.threshold.length = 0;
    this.dirty = true;
  }

  setEvent(event) {
    const start = Date.parse(event.started_at) / 1000;
    const end = event.ended_at ? Date.parse(event.ended_at) / 1000 : null;
    this.events.set(event.id, { start, end });
    while (this.events.size > 200) this.events.delete(this.events.keys().next().value);
    this.dirty = true;
  }

  flush() {
    if (!this.dirty || document.hidden) return;
    this.dirty = false;
    this.plot.setData([this.xs, this.z, this.threshold]);
    this.el.dataset.points = String(this.xs.length);
    this.el.setAttribute("aria-label", this.summary());
  }

  summary() {
    if (!this.xs.length) return "score chart: no scored frame yet";
    const z = this.z.at(-1);
    const thr = this.threshold.at(-1);
    return `score chart: ${this.xs.length} points, latest smoothed z ${z.toFixed(2)}, threshold ${thr?.toFixed(2)}`;
  }

  destroy() {
    clearInterval(this.timer);
    this.resize.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
