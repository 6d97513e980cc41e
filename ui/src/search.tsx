// The search page: one free-text box, the attribute fields, facets with counts, and the study
// list (server-side paging and sorting). Every DICOM value is rendered as text by JSX.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, search as callSearch, type Bucket, type Hit, type SearchResult, type UiConfig } from "./api";
import { count, dicomDate, personName } from "./format";
import {
  apiParams, bucketRange, EMPTY, fromInputDate, PAGE_SIZE, toInputDate,
  type Filter, type Search,
} from "./query";

interface Props {
  search: Search;
  navigate: (next: Search) => void;
  config: UiConfig;
  open: (study: string) => void;
}

const FIELD_LABELS: [Filter, string, string][] = [
  ["PatientName", "Patient name", "from the start of the family name; * and ? as wildcards"],
  ["PatientID", "Patient ID", "exact; * and ? as wildcards"],
  ["AccessionNumber", "Accession number", "exact; * and ? as wildcards"],
  ["StudyDescription", "Study description", "anywhere in the description"],
  ["ReferringPhysicianName", "Referring physician", "from the start of the family name"],
  ["Modality", "Modality", "e.g. CT, MR"],
];

const FACET_TITLES: Record<string, string> = {
  Modality: "Modality",
  StudyDate: "Study date",
  InstitutionName: "Institution",
  BodyPartExamined: "Body part",
};

type State =
  | { kind: "loading" }
  | { kind: "done"; result: SearchResult }
  | { kind: "error"; error: ApiError };

export function SearchPage({ search, navigate, config, open }: Props) {
  const [state, setState] = useState<State>({ kind: "loading" });

  useEffect(() => {
    const abort = new AbortController();
    setState({ kind: "loading" });
    callSearch(apiParams(search), abort.signal).then(
      (result) => setState({ kind: "done", result }),
      (error: unknown) => {
        if (abort.signal.aborted) return;
        setState({ kind: "error", error: error instanceof ApiError ? error : new ApiError(0, String(error)) });
      },
    );
    return () => abort.abort();
  }, [search]);

  const result = state.kind === "done" ? state.result : null;
  return (
    <main class="layout">
      <SearchForm search={search} navigate={navigate} />
      <aside class="facets" aria-label="Narrow down">
        {result && <Facets result={result} search={search} navigate={navigate} />}
      </aside>
      <section id="results" class="results" aria-labelledby="results-title" tabIndex={-1}>
        <h2 id="results-title">Studies</h2>
        <p class="status" role="status" aria-live="polite">
          {state.kind === "loading" && "Searching…"}
          {result && summary(result)}
        </p>
        {state.kind === "error" && (
          <p class="error" role="alert">
            {state.error.parameter ? `${state.error.parameter}: ` : ""}
            {state.error.message}
          </p>
        )}
        {result && result.hits.length > 0 && (
          <>
            <StudyTable result={result} search={search} navigate={navigate} config={config} open={open} />
            <Pager result={result} search={search} navigate={navigate} />
          </>
        )}
      </section>
    </main>
  );
}

function summary(result: SearchResult): string {
  if (result.total === 0) return "No study matches.";
  const first = result.offset + 1;
  const last = result.offset + result.hits.length;
  return `${first}–${last} of ${result.total} ${result.total === 1 ? "study" : "studies"}`;
}

function SearchForm({ search, navigate }: { search: Search; navigate: (s: Search) => void }) {
  const [draft, setDraft] = useState<Search>(search);
  useEffect(() => setDraft(search), [search]); // Back/Forward and facet clicks refill the form

  const submit = (event: Event) => {
    event.preventDefault();
    navigate({ ...draft, offset: 0 });
  };
  const setFilter = (name: Filter, value: string) => setDraft({ ...draft, filters: { ...draft.filters, [name]: value } });

  return (
    <form class="search" role="search" aria-label="Studies" onSubmit={submit}>
      <div class="freetext">
        <label for="q">Search all attributes and report text</label>
        <input id="q" type="search" name="q" value={draft.q} autoComplete="off" spellcheck={false}
          onInput={(e) => setDraft({ ...draft, q: e.currentTarget.value })} />
        <button type="submit">Search</button>
      </div>
      <fieldset class="fields">
        <legend>Attributes</legend>
        {FIELD_LABELS.map(([name, label, hint]) => (
          <div class="field" key={name}>
            <label for={`f-${name}`}>{label}</label>
            <input id={`f-${name}`} name={name} value={draft.filters[name] ?? ""} autoComplete="off"
              aria-describedby={`h-${name}`} onInput={(e) => setFilter(name, e.currentTarget.value)} />
            <small id={`h-${name}`}>{hint}</small>
          </div>
        ))}
        <div class="field">
          <label for="f-from">Study date from</label>
          <input id="f-from" type="date" value={toInputDate(draft.from)}
            onInput={(e) => setDraft({ ...draft, from: fromInputDate(e.currentTarget.value) })} />
        </div>
        <div class="field">
          <label for="f-to">Study date to</label>
          <input id="f-to" type="date" value={toInputDate(draft.to)}
            onInput={(e) => setDraft({ ...draft, to: fromInputDate(e.currentTarget.value) })} />
        </div>
      </fieldset>
      <div class="actions">
        <button type="submit">Search</button>
        <button type="button" class="secondary" onClick={() => navigate(EMPTY)}>Clear</button>
      </div>
    </form>
  );
}

function Facets({ result, search, navigate }: { result: SearchResult; search: Search; navigate: (s: Search) => void }) {
  return (
    <>
      <h2>Narrow down</h2>
      {Object.entries(result.facets).map(([name, buckets]) =>
        buckets.length === 0 ? null : (
          <section class="facet" key={name} aria-labelledby={`facet-${name}`}>
            <h3 id={`facet-${name}`}>{FACET_TITLES[name] ?? name}</h3>
            <ul>
              {buckets.map((bucket) => (
                <li key={bucket.value}>
                  <FacetButton name={name} bucket={bucket} search={search} navigate={navigate} />
                </li>
              ))}
            </ul>
          </section>
        ),
      )}
    </>
  );
}

function FacetButton({ name, bucket, search, navigate }: {
  name: string; bucket: Bucket; search: Search; navigate: (s: Search) => void;
}) {
  let active: boolean;
  let toggle: () => Search;
  if (name === "StudyDate") {
    const range = bucketRange(bucket.value);
    active = range !== null && search.from === range[0] && search.to === range[1];
    toggle = () => (active || !range ? { ...search, from: "", to: "", offset: 0 }
      : { ...search, from: range[0], to: range[1], offset: 0 });
  } else {
    const filter = name as Filter;
    active = search.filters[filter] === bucket.value;
    toggle = () => ({ ...search, filters: { ...search.filters, [filter]: active ? "" : bucket.value }, offset: 0 });
  }
  return (
    <button type="button" class="bucket" aria-pressed={active} onClick={() => navigate(toggle())}>
      <span class="value">{bucket.value}</span>
      <span class="count" aria-label={`${bucket.count} ${bucket.count === 1 ? "study" : "studies"}`}>{bucket.count}</span>
    </button>
  );
}

const COLUMNS: { label: string; sort?: string }[] = [
  { label: "Patient", sort: "PatientName" },
  { label: "Patient ID" },
  { label: "Birth date" },
  { label: "Study date", sort: "StudyDate" },
  { label: "Description" },
  { label: "Modalities" },
  { label: "Series" },
  { label: "Instances" },
];

function StudyTable({ result, search, navigate, config, open }: {
  result: SearchResult; search: Search; navigate: (s: Search) => void; config: UiConfig; open: (study: string) => void;
}) {
  const body = useRef<HTMLTableSectionElement>(null);
  // Arrow keys move between the rows' first links (one Tab stop per row stays for screen readers).
  const onKeyDown = (event: KeyboardEvent) => {
    const links = Array.from(body.current?.querySelectorAll<HTMLElement>("a.study") ?? []);
    const at = links.indexOf(document.activeElement as HTMLElement);
    if (at < 0) return;
    const moves: Record<string, number> = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: links.length - 1 };
    const next = moves[event.key];
    if (next === undefined) return;
    event.preventDefault();
    links[Math.max(0, Math.min(links.length - 1, next))].focus();
  };
  const current = result.sort;
  return (
    <table class="studies">
      <caption class="visually-hidden">Matching studies, {summary(result)}</caption>
      <thead>
        <tr>
          {COLUMNS.map((col) => (
            <th scope="col" key={col.label}
              aria-sort={col.sort && current.replace("-", "") === col.sort
                ? (current.startsWith("-") ? "descending" : "ascending") : undefined}>
              {col.sort ? <SortButton label={col.label} sortKey={col.sort} search={search} current={current} navigate={navigate} />
                : col.label}
            </th>
          ))}
          {config.viewer_url && <th scope="col"><span class="visually-hidden">Viewer</span></th>}
        </tr>
      </thead>
      <tbody ref={body} onKeyDown={onKeyDown}>
        {result.hits.map((hit) => <Row key={hit.StudyInstanceUID} hit={hit} viewer={config.viewer_url} open={open} />)}
      </tbody>
    </table>
  );
}

function SortButton({ label, sortKey, search, current, navigate }: {
  label: string; sortKey: string; search: Search; current: string; navigate: (s: Search) => void;
}) {
  const ascending = current === sortKey;
  const next = ascending ? `-${sortKey}` : sortKey;
  return (
    <button type="button" class="sort" onClick={() => navigate({ ...search, sort: next, offset: 0 })}>
      {label}
      <span aria-hidden="true">{current === sortKey ? " ▲" : current === `-${sortKey}` ? " ▼" : ""}</span>
    </button>
  );
}

function Row({ hit, viewer, open }: { hit: Hit; viewer: string | null; open: (study: string) => void }) {
  const a = hit.attributes;
  const name = personName(a.PatientName) || "(no name)";
  const modalities = hit.modalities.join(", ");
  return (
    <tr>
      <td>
        <a class="study" href={`/ui/study/${encodeURIComponent(hit.StudyInstanceUID)}`} data-uid={hit.StudyInstanceUID}
          onClick={(e) => {
            if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return; // a new tab: the browser's
            e.preventDefault();
            open(hit.StudyInstanceUID);
          }}>{name}</a>
      </td>
      <td>{a.PatientID ?? ""}</td>
      <td>{dicomDate(a.PatientBirthDate)}</td>
      <td>{dicomDate(a.StudyDate)}</td>
      <td>{a.StudyDescription ?? ""}</td>
      <td>{modalities}</td>
      <td class="num">{count(a.NumberOfStudyRelatedSeries)}</td>
      <td class="num">{count(a.NumberOfStudyRelatedInstances ?? hit.instances)}</td>
      {viewer && (
        <td>
          <a href={viewer.replaceAll("{StudyInstanceUID}", encodeURIComponent(hit.StudyInstanceUID))}
            target="_blank" rel="noopener noreferrer">Open in viewer</a>
        </td>
      )}
    </tr>
  );
}

function Pager({ result, search, navigate }: { result: SearchResult; search: Search; navigate: (s: Search) => void }) {
  const page = Math.floor(result.offset / PAGE_SIZE) + 1;
  const pages = Math.max(1, Math.ceil(Math.min(result.total, 10000) / PAGE_SIZE));
  const go = (offset: number) => {
    navigate({ ...search, offset });
    document.getElementById("results")?.focus();
  };
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={result.offset === 0} onClick={() => go(Math.max(0, result.offset - PAGE_SIZE))}>
        Previous
      </button>
      <span>Page {page} of {pages}</span>
      <button type="button" disabled={page >= pages} onClick={() => go(result.offset + PAGE_SIZE)}>
        Next
      </button>
    </nav>
  );
}
