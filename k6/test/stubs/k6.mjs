// k6's check(): records every named result so tests can read them.
export const results = [];
export function check(value, checks) {
  let all = true;
  for (const [name, fn] of Object.entries(checks)) {
    const ok = Boolean(fn(value));
    results.push({ name, ok });
    all = all && ok;
  }
  return all;
}
