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
