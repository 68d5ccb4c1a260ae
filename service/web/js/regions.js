// Ignore regions drawn as polygons over the live view (an SVG laid over the image, in frame pixels).
// Click to add points; click the first point, press Enter or "Finish polygon" to close one (3
// points at least); Backspace removes the last point, Escape stops drawing. The same polygons can
// be edited as JSON (keyboard users, exact numbers).

import { svg } from "./dom.js";

export class RegionEditor {
  constructor(overlay, { onChange = () => {} } = {}) {
    this.overlay = overlay; // <svg>
    this.onChange = onChange;
    this.size = null; // [W, H] of the stream's frames
    this.regions = []; // saved + added polygons: [[[x, y], ...], ...]
    this.points = []; // the polygon being drawn
    this.drawing = false;
    overlay.addEventListener("click", (e) => this.click(e));
    overlay.addEventListener("keydown", (e) => this.key(e));
  }

  setSize(width, height) {
    if (this.size && this.size[0] === width && this.size[1] === height) return;
    this.size = [width, height];
    this.overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.render();
  }

  setRegions(regions) {
    this.regions = regions.map((polygon) => polygon.map(([x, y]) => [x, y]));
    this.render();
  }

  start() {
    if (!this.size) return false;
    this.drawing = true;
    this.points = [];
    this.overlay.classList.add("drawing");
    this.overlay.focus();
    this.render();
    this.onChange();
    return true;
  }

  stop() {
    this.drawing = false;
    this.points = [];
    this.overlay.classList.remove("drawing");
    this.render();
    this.onChange();
  }

  finish() {
    if (this.points.length >= 3) this.regions.push(this.points);
    this.points = [];
    this.stop();
  }

  remove(index) {
    this.regions.splice(index, 1);
    this.render();
    this.onChange();
  }

  framePoint(event) {
    const box = this.overlay.getBoundingClientRect();
    const [width, height] = this.size;
    const x = ((event.clientX - box.left) / box.width) * width;
    const y = ((event.clientY - box.top) / box.height) * height;
    const clamp = (v, most) => Math.round(Math.min(Math.max(v, 0), most) * 10) / 10;
    return [clamp(x, width), clamp(y, height)];
  }

  click(event) {
    if (!this.drawing || !this.size) return;
    const point = this.framePoint(event);
    const first = this.points[0];
    const near = first && Math.hypot(first[0] - point[0], first[1] - point[1]) < this.size[0] / 40;
    if (near && this.points.length >= 3) {
      this.finish();
      return;
    }
    this.points.push(point);
    this.render();
    this.onChange();
  }

  key(event) {
    if (!this.drawing) return;
    if (event.key === "Escape") this.stop();
    else if (event.key === "Enter") this.finish();
    else if (event.key === "Backspace") {
      this.points.pop();
      this.render();
      this.onChange();
    } else return;
    event.preventDefault();
  }

  render() {
    const overlay = this.overlay;
    overlay.replaceChildren();
    if (!this.size) return;
    const dot = Math.max(this.size[0], this.size[1]) / 120;
    this.regions.forEach((polygon, index) => {
      const shape = svg("polygon", { points: polygon.map((p) => p.join(",")).join(" "), class: "region" });
      shape.append(svg("title"));
      shape.firstChild.textContent = `ignore region ${index + 1}`;
      overlay.append(shape);
    });
    if (this.points.length) {
      overlay.append(svg("polyline", { points: this.points.map((p) => p.join(",")).join(" "), class: "region-draft" }));
      this.points.forEach(([x, y], i) => overlay.append(svg("circle", { cx: x, cy: y, r: i === 0 ? dot * 1.6 : dot, class: "region-point" })));
    }
  }
}
