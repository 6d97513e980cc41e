// DICOM values as people read them. Everything here returns plain strings; the page renders
// them as text (JSX escapes), never as HTML.

/** PS3.5 6.2 PN: "Family^Given^Middle^Prefix^Suffix", component groups split by "=". */
export function personName(value: string | number | undefined): string {
  if (value === undefined || value === null) return "";
  const groups = String(value).split("=").filter((g) => g.replaceAll("^", "").trim() !== "");
  return groups
    .map((group) => {
      const [family = "", given = "", middle = "", prefix = "", suffix = ""] = group.split("^").map((c) => c.trim());
      const rest = [prefix, given, middle].filter(Boolean).join(" ");
      const name = family && rest ? `${family}, ${rest}` : family || rest;
      return suffix ? `${name} ${suffix}` : name;
    })
    .join(" = ");
}

/** DA (YYYYMMDD) -> YYYY-MM-DD; anything else as it is. */
export function dicomDate(value: string | number | undefined): string {
  if (value === undefined || value === null) return "";
  const text = String(value);
  return /^[0-9]{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}` : text;
}

export function count(value: string | number | undefined): string {
  return value === undefined || value === null || value === "" ? "" : String(value);
}

/** The first value of ``tag`` in a DICOM JSON dataset, as text (a PN as its first non-empty group). */
export function first(ds: Record<string, { vr: string; Value?: unknown[] }> | undefined, tag: string): string {
  const value = ds?.[tag]?.Value?.[0];
  if (value === undefined || value === null) return "";
  if (typeof value === "object") {
    const pn = value as Record<string, string | undefined>;
    return pn.Alphabetic || pn.Ideographic || pn.Phonetic || "";
  }
  return String(value);
}

/** One value of an element as text (PN groups joined by "=", as PS3.5 writes them). */
export function valueText(vr: string, value: unknown): string {
  if (value === null || value === undefined) return "";
  if (vr === "PN" && typeof value === "object") {
    const pn = value as Record<string, string | undefined>;
    return [pn.Alphabetic ?? "", pn.Ideographic ?? "", pn.Phonetic ?? ""].join("=").replace(/=+$/, "");
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}
