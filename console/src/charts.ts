// The console's two charts, drawn by Chart.js: only the parts they use are
// registered, so the bundle carries no other chart types.
import {
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";

import type { Entry } from "./api";
import { formatMoney } from "./money";

Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Legend, Tooltip);

const time = (ms: number) => new Date(ms).toLocaleTimeString();

/** Accepted and applied transactions a second, one point per scrape. */
export class RateChart {
  private readonly chart: Chart<"line", number[], string>;

  constructor(canvas: HTMLCanvasElement, private readonly points = 60) {
    this.chart = new Chart(canvas, {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "accepted / s", data: [], borderColor: "#2563eb", backgroundColor: "#2563eb" },
          { label: "applied / s", data: [], borderColor: "#059669", backgroundColor: "#059669" },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "transactions / s" } } },
      },
    });
  }

  add(at: number, accepted: number, applied: number): void {
    const { labels, datasets } = this.chart.data;
    labels?.push(time(at));
    datasets[0].data.push(accepted);
    datasets[1].data.push(applied);
    if ((labels?.length ?? 0) > this.points) {
      labels?.shift();
      for (const dataset of datasets) dataset.data.shift();
    }
    this.chart.update();
  }

  destroy(): void {
    this.chart.destroy();
  }
}

/** An account's balance after each history entry, oldest first, as a step
 * line over time. */
export function balanceChart(canvas: HTMLCanvasElement, entries: Entry[], asset: string): Chart {
  const points = [...entries].reverse().map((e) => ({ x: Date.parse(e.at), y: e.balance_after }));
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: [{ label: "balance", data: points, stepped: "before", borderColor: "#2563eb", backgroundColor: "#2563eb" }],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (item) => formatMoney(item.parsed.y ?? 0, asset), title: (items) => time(items[0].parsed.x ?? 0) } },
      },
      scales: {
        x: { type: "linear", ticks: { callback: (value) => time(Number(value)), maxTicksLimit: 6 } },
        y: { ticks: { callback: (value) => formatMoney(Number(value), asset) } },
      },
    },
  });
}
