// The search as it lives in the URL (bookmarkable, shareable), and the search API call it makes.
// The URL holds what the user typed, under the search API's own parameter names; apiParams()
// adds the conveniences (a name matches from its start) when it asks the API.

export const TEXT_FIELDS = [
  "PatientName", "PatientID", "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "Modality",
] as const;
export const FACET_FILTERS = ["Modality", "InstitutionName", "BodyPartExamined"] as const;
export const FACETS = ["Modality", "StudyDate", "InstitutionName", "BodyPartExamined"] as const;
export const SORTS = ["relevance", "-StudyDate", "StudyDate", "PatientName", "-PatientName"] as const;
export const PAGE_SIZE = 25;

export type Filter = (typeof TEXT_FIELDS)[number] | (typeof FACET_FILTERS)[number];
export const FILTERS: readonly Filter[] = [...new Set<Filter>([...TEXT_FIELDS, ...FACET_FILTERS])];

export interface Search {
  q: string;
  filters: Partial<Record<Filter, string>>;
  from: string; // StudyDate range as YYYYMMDD, "" for an open end
  to: string;
  sort: string; // "" = the API's default (relevance with q, else newest first)
  offset: number;
}

export const EMPTY: Search = { q: "", filters: {}, from: "", to: "", sort: "", offset: 0 };

const DATE_RANGE = /^([0-9]{8})?-([0-9]{8})?$/;
const DATE = /^[0-9]{8}$/;

export function fromUrl(search: string): Search {
  const p = new URLSearchParams(search);
  const filters: Partial<Record<Filter, string>> = {};
  for (const name of FILTERS) {
    const value = p.get(name);
    if (value) filters[name] = value;
  }
  let from = "", to = "";
  const date = p.get("StudyDate") ?? "";
  const range = DATE_RANGE.exec(date);
  if (range) {
    from = range[1] ?? "";
    to = range[2] ?? "";
  } else if (DATE.test(date)) {
    from = to = date;
  }
  const offset = Number.parseInt(p.get("offset") ?? "0", 10);
  const sort = p.get("sort") ?? "";
  return {
    q: p.get("q") ?? "",
    filters,
    from,
    to,
    sort: (SORTS as readonly string[]).includes(sort) ? sort : "",
    offset: Number.isFinite(offset) && offset > 0 ? offset : 0,
  };
}

function studyDate(s: Search): string {
  if (!s.from && !s.to) return "";
  if (s.from && s.from === s.to) return s.from;
  return `${s.from}-${s.to}`;
}

/** The page's own query string: what the user asked, nothing derived. */
export function toUrl(s: Search): string {
  const p = new URLSearchParams();
  if (s.q.trim()) p.set("q", s.q.trim());
  for (const name of FILTERS) {
    const value = s.filters[name]?.trim();
    if (value) p.set(name, value);
  }
  const date = studyDate(s);
  if (date) p.set("StudyDate", date);
  if (s.sort) p.set("sort", s.sort);
  if (s.offset > 0) p.set("offset", String(s.offset));
  const text = p.toString();
  return text ? `?${text}` : "";
}

const WILDCARD = /[*?]/;

/** A typed value as the API matches it (C-FIND rules): names match from their start, a
 *  description anywhere; a value with its own * or ? is taken as it is. */
function matchValue(name: Filter, value: string): string {
  if (WILDCARD.test(value)) return value;
  if (name === "PatientName" || name === "ReferringPhysicianName") return `${value}*`;
  if (name === "StudyDescription") return `*${value}*`;
  return value;
}

export function apiParams(s: Search): URLSearchParams {
  const p = new URLSearchParams();
  if (s.q.trim()) p.set("q", s.q.trim());
  for (const name of FILTERS) {
    const value = s.filters[name]?.trim();
    if (value) p.set(name, matchValue(name, value));
  }
  const date = studyDate(s);
  if (date) p.set("StudyDate", date);
  if (s.sort && !(s.sort === "relevance" && !s.q.trim())) p.set("sort", s.sort);
  p.set("offset", String(s.offset));
  p.set("limit", String(PAGE_SIZE));
  p.set("facets", FACETS.join(","));
  return p;
}

/** The StudyDate range of a histogram bucket: "2023" -> a year, "2023-09" -> a month. */
export function bucketRange(value: string): [string, string] | null {
  const year = /^([0-9]{4})$/.exec(value);
  if (year) return [`${year[1]}0101`, `${year[1]}1231`];
  const month = /^([0-9]{4})-([0-9]{2})$/.exec(value);
  if (month) {
    const last = new Date(Date.UTC(Number(month[1]), Number(month[2]), 0)).getUTCDate();
    return [`${month[1]}${month[2]}01`, `${month[1]}${month[2]}${String(last).padStart(2, "0")}`];
  }
  return null;
}

/** YYYYMMDD <-> YYYY-MM-DD (the date input's value). */
export function toInputDate(value: string): string {
  return DATE.test(value) ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : "";
}

export function fromInputDate(value: string): string {
  return /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(value) ? value.replaceAll("-", "") : "";
}
