// Overview: is the engine ready, is anything stalled or behind, and how fast
// is it accepting and applying; live from /ready and /metrics every 2 s.
import { operations, type Readiness } from "../api";
import { RateChart } from "../charts";
import { h, problemBox } from "../dom";
import { parseMetrics, quantile, readScrape, since, total, type Scrape } from "../metrics";

const EVERY_MS = 2_000;

const rate = (now: number, before: number, seconds: number) => Math.max(0, now - before) / seconds;
const ms = (seconds: number | undefined) => (seconds === undefined ? "—" : `${(seconds * 1000).toFixed(1)} ms`);

function card(name: string, title: string, value: string, note = "", warn = false): HTMLElement {
  return h(
    "section",
    { class: warn ? "card warn" : "card", "data-card": name, "aria-label": title },
    h("h2", {}, title),
    h("p", { class: "value" }, value),
    note ? h("p", { class: "note" }, note) : null,
  );
}

function readinessCards(ready: Readiness, stalledPartitions: number): HTMLElement[] {
  const isReady = ready.redis && ready.kafka && !ready.stalled;
  const parts = [`Redis ${ready.redis ? "up" : "down"}`, `Kafka ${ready.kafka ? "up" : "down"}`];
  const stall = ready.stalled;
  const stallNote = stall
    ? `${stall.topic}/${stall.partition} at offset ${stall.offset} since ${stall.since}${stall.id ? `, record ${stall.id}` : ""}${stall.error ? `: ${stall.error}` : ""}`
    : "none";
  const cards = [
    card("readiness", "Readiness", isReady ? "ready" : "not ready", parts.join(", "), !isReady),
    card("stalled", "Stalled partitions", String(stalledPartitions), stallNote, stalledPartitions > 0 || !!stall),
  ];
  if (ready.backlog) {
    const { records, max_records, shedding } = ready.backlog;
    cards.push(card("backlog", "Backlog", `${records} records`, `sheds new work at ${max_records}${shedding ? ": shedding now" : ""}`, shedding));
  }
  return cards;
}

export function overview(view: HTMLElement): () => void {
  const cards = h("div", { class: "cards", "aria-live": "polite" });
  const canvas = h("canvas", { role: "img", "aria-label": "Accepted and applied transactions per second, last two minutes" });
  const error = h("div");
  view.append(
    h("h1", {}, "Overview"),
    h("p", { class: "lead" }, `This API process's /ready and /metrics, read every ${EVERY_MS / 1000} s.`),
    error,
    cards,
    h("div", { class: "chart" }, canvas),
  );
  const chart = new RateChart(canvas);
  let before: Scrape | undefined;
  const refresh = async () => {
    try {
      const [ready, text] = await Promise.all([operations.ready(), operations.metrics()]);
      const samples = parseMetrics(text);
      const now = readScrape(samples, Date.now());
      const seconds = before ? (now.at - before.at) / 1000 : 0;
      const accepted = before ? rate(now.accepted, before.accepted, seconds) : undefined;
      const applied = before ? rate(now.applied, before.applied, seconds) : undefined;
      // p99 of the last interval when it saw any, else since the start.
      const recent = (now: Map<number, number>, then?: Map<number, number>) => {
        const window = then ? since(now, then) : now;
        return quantile(0.99, window) ?? quantile(0.99, now);
      };
      const perSecond = (value?: number) => (value === undefined ? "—" : value.toFixed(1));
      cards.replaceChildren(
        ...readinessCards(ready, total(samples, "txengine_consumer_stalled_partitions")),
        card("lag", "Consumer lag", `${total(samples, "txengine_consumer_lag")} records`, "this process's partitions"),
        card("accepted", "Accepted / s", perSecond(accepted), `${now.accepted} since start`),
        card("applied", "Applied / s", perSecond(applied), `${now.applied} since start, ${now.rejected} of them rejected`),
        card("p99-accept", "p99 POST /transactions", ms(recent(now.requestSeconds, before?.requestSeconds)), "to the 202"),
        card("p99-apply", "p99 accepted → applied", ms(recent(now.applySeconds, before?.applySeconds)), "Kafka and the consumer"),
      );
      if (left) return;
      if (accepted !== undefined && applied !== undefined) chart.add(now.at, accepted, applied);
      before = now;
      error.replaceChildren();
    } catch (e) {
      error.replaceChildren(problemBox(e));
    }
  };
  // The next read is set after this one ends, so a slow /ready (Redis down)
  // never has two reads overlap.
  let timer: ReturnType<typeof setTimeout> | undefined;
  let left = false;
  const loop = async () => {
    await refresh();
    if (!left) timer = setTimeout(loop, EVERY_MS);
  };
  void loop();
  return () => {
    left = true;
    clearTimeout(timer);
    chart.destroy();
  };
}
