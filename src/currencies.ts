// ISO 4217 currency codes. The list is the ICU data built into Node
// (Intl.supportedValuesOf): the currencies in circulation, without the
// historic, fund and test codes (XTS, XXX) that no price is quoted in.
const CODES: ReadonlySet<string> = new Set(Intl.supportedValuesOf('currency'));

/** Whether code is an ISO 4217 code of a currency in circulation (three capital letters, e.g. EUR). */
export function isCurrencyCode(code: string): boolean {
  return CODES.has(code);
}
