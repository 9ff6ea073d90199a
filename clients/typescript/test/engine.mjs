// The suite runs against a live engine named by the environment, as
// `cargo test -p harness --test engine clients::` starts it: TXENGINE_URL,
// TXENGINE_ADMIN_TOKEN, TXENGINE_API_KEY and, for the fault test,
// TXENGINE_KAFKA_PID (its broker, stopped and resumed by the test).
import { readFileSync } from "node:fs";

export const CASES = JSON.parse(readFileSync(new URL("../../cases.json", import.meta.url), "utf8"));

/** The environment's value, or the reason to skip when it is not set. */
export function engineEnv(...names) {
  const missing = names.filter((name) => !process.env[name]);
  if (missing.length) {
    return { skip: `${missing.join(", ")} not set: run through \`cargo test -p harness --test engine clients::\`` };
  }
  return { values: names.map((name) => process.env[name]) };
}
