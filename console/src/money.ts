// Money as the operator reads and types it: the API counts whole minor units
// of an asset such as `USD/2`, where the number after `/` is how many
// decimal places one major unit has. Strings throughout, never floats, so
// every amount up to 2^53-1 shows and parses exactly.

/** The number of decimal places of `asset` (`USD/2`: 2; `POINTS`: 0). */
export function decimalsOf(asset: string): number {
  const match = /\/(\d{1,2})$/.exec(asset);
  return match ? Number(match[1]) : 0;
}

/** The asset's code without its decimal places (`USD/2`: `USD`). */
export function codeOf(asset: string): string {
  return asset.replace(/\/\d{1,2}$/, "");
}

/** `minor` minor units in major units: 1234567 of `USD/2` is `12,345.67 USD`. */
export function formatMoney(minor: number, asset: string): string {
  return `${formatAmount(minor, decimalsOf(asset))} ${codeOf(asset)}`;
}

/** `minor` in major units with `decimals` places, grouped by thousands. */
export function formatAmount(minor: number, decimals: number): string {
  if (!Number.isInteger(minor)) return String(minor);
  // BigInt's digits: exact for any integer a double holds, past 2^53 too
  // (an admin set's change may be), where String() would write 1e+21.
  const digits = (minor < 0 ? -BigInt(minor) : BigInt(minor)).toString().padStart(decimals + 1, "0");
  const whole = digits.slice(0, digits.length - decimals).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const fraction = digits.slice(digits.length - decimals);
  return `${minor < 0 ? "-" : ""}${whole}${decimals ? `.${fraction}` : ""}`;
}

/** The minor units a typed amount (`12.5`, `-3`, `1,000.25`) is in `asset`;
 * throws with what is wrong, never rounds. */
export function parseMoney(text: string, asset: string): number {
  const decimals = decimalsOf(asset);
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text.trim().replace(/,/g, ""));
  if (!match) throw new Error(`"${text}" is not an amount`);
  const [, sign, whole, fraction = ""] = match;
  if (fraction.length > decimals) {
    throw new Error(`${codeOf(asset)} has ${decimals} decimal places; "${text}" has more`);
  }
  const minor = Number(`${whole}${fraction.padEnd(decimals, "0")}`);
  if (!Number.isSafeInteger(minor)) throw new Error(`"${text}" is too large`);
  return sign ? -minor : minor;
}

/** The bounds an account has when none were given. */
export const NO_LOWER_BOUND = -Number.MAX_SAFE_INTEGER;
export const NO_CAP = Number.MAX_SAFE_INTEGER;
