// What the Overview reads from `/metrics` (Prometheus' text format): the
// counters it turns into rates, the gauges it shows, and p99 from histogram
// buckets the way Prometheus' histogram_quantile reads them.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const match = LINE.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const [, name, value] of (match[2] ?? "").matchAll(LABEL)) {
      labels[name] = value.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

type Wanted = Record<string, string | string[]>;

function matches(sample: Sample, wanted: Wanted): boolean {
  return Object.entries(wanted).every(([name, value]) =>
    Array.isArray(value) ? value.includes(sample.labels[name]) : sample.labels[name] === value,
  );
}

/** The sum of `name` over the samples whose labels match `wanted`. */
export function total(samples: Sample[], name: string, wanted: Wanted = {}): number {
  return samples.filter((s) => s.name === name && matches(s, wanted)).reduce((sum, s) => sum + s.value, 0);
}

/** The cumulative buckets of histogram `name` (summed over the series that
 * match `wanted`), by upper bound. */
export function buckets(samples: Sample[], name: string, wanted: Wanted = {}): Map<number, number> {
  const counts = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !matches(s, wanted)) continue;
    const le = Number(s.labels.le === "+Inf" ? Infinity : s.labels.le);
    counts.set(le, (counts.get(le) ?? 0) + s.value);
  }
  return counts;
}

/** The `q` quantile of cumulative `buckets`, interpolated within its
 * bucket; `undefined` with no observations. */
export function quantile(q: number, counts: Map<number, number>): number | undefined {
  const sorted = [...counts.entries()].sort(([a], [b]) => a - b);
  const count = sorted.at(-1)?.[1] ?? 0;
  if (count <= 0) return undefined;
  const rank = q * count;
  let [lower, below] = [0, 0];
  for (const [le, cumulative] of sorted) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / Math.max(cumulative - below, 1e-9);
    }
    [lower, below] = [le, cumulative];
  }
  return lower;
}

/** `now`'s buckets less `before`'s: the observations between two scrapes. */
export function since(now: Map<number, number>, before: Map<number, number>): Map<number, number> {
  return new Map([...now].map(([le, count]) => [le, count - (before.get(le) ?? 0)]));
}

/** What one scrape of /metrics counts. */
export interface Scrape {
  at: number;
  accepted: number;
  /** Records the consumers applied for the first time, whatever their
   * outcome: the money moved, or the refusal recorded. */
  applied: number;
  /** Of those, the ones refused (`insufficient_funds`, ...). */
  rejected: number;
  requestSeconds: Map<number, number>;
  applySeconds: Map<number, number>;
}

export function readScrape(samples: Sample[], at: number): Scrape {
  return {
    at,
    // Single requests answered 202, and batch items accepted.
    accepted:
      total(samples, "txengine_http_requests_total", {
        route: ["/transactions", "/transaction"],
        method: "POST",
        status: "202",
      }) + total(samples, "txengine_batch_items_total", { status: "pending" }),
    // First applies only: a redelivered record is not applied again.
    applied: total(samples, "txengine_apply_outcomes_total", { duplicate: "false" }),
    rejected: total(samples, "txengine_apply_outcomes_total", { duplicate: "false", outcome: "rejected" }),
    requestSeconds: buckets(samples, "txengine_http_request_seconds", { route: "/transactions", method: "POST" }),
    applySeconds: buckets(samples, "txengine_accept_to_applied_seconds"),
  };
}
