// The study page: the study's attributes, its series with thumbnails (the thumbnail endpoint),
// and a tag browser for one instance. Every value is rendered as text.
import { useEffect, useMemo, useState } from "preact/hooks";
import {
  ApiError, instancesOf, metadataOf, seriesOf, studyOf, thumbnailUrl,
  type DicomElement, type DicomJson,
} from "./api";
import { AuthImage } from "./authimage";
import { Download, instanceUrl, seriesZipUrl, studyMediaUrl, studyZipUrl } from "./downloads";
import { dicomDate, first, personName, valueText } from "./format";
import { ViewLink } from "./viewer";
import { may } from "./auth";
import { ObjectLinks } from "./objects";
import { PdfUpload } from "./pdfupload";
import { useSession } from "./session";

const T = {
  PatientName: "00100010", PatientID: "00100020", PatientBirthDate: "00100030", PatientSex: "00100040",
  StudyDate: "00080020", StudyDescription: "00081030", AccessionNumber: "00080050",
  ReferringPhysicianName: "00080090", ModalitiesInStudy: "00080061",
  SeriesInstanceUID: "0020000E", SeriesNumber: "00200011", SeriesDescription: "0008103E", Modality: "00080060",
  NumberOfSeriesRelatedInstances: "00201209", BodyPartExamined: "00180015",
  SOPInstanceUID: "00080018", InstanceNumber: "00200013",
};
// Series whose objects are not images: no thumbnail is asked for.
const NOT_IMAGES = new Set(["SR", "KO", "PR", "DOC", "AU", "ECG", "HD", "REG", "RWV", "PLAN", "RTPLAN"]);

type Load<V> = { kind: "loading" } | { kind: "done"; value: V } | { kind: "error"; error: string };

function useLoad<V>(load: (signal: AbortSignal) => Promise<V>, deps: unknown[]): Load<V> {
  const [state, setState] = useState<Load<V>>({ kind: "loading" });
  useEffect(() => {
    const abort = new AbortController();
    setState({ kind: "loading" });
    load(abort.signal).then(
      (value) => setState({ kind: "done", value }),
      (error: unknown) => {
        if (!abort.signal.aborted) setState({ kind: "error", error: error instanceof ApiError ? error.message : String(error) });
      },
    );
    return () => abort.abort();
  }, deps);
  return state;
}

export function StudyPage({ uid, back, open }: { uid: string; back: () => void; open?: (url: string) => void }) {
  const study = useLoad((signal) => studyOf(uid, signal), [uid]);
  const [added, setAdded] = useState(0); // a PDF report added: the series again
  const series = useLoad((signal) => seriesOf(uid, signal), [uid, added]);
  const session = useSession();
  const [chosen, setChosen] = useState<string | null>(null);
  const ds = study.kind === "done" ? study.value[0] : undefined;
  const sorted = useMemo(() => (series.kind === "done"
    ? [...series.value].sort((a, b) => Number(first(a, T.SeriesNumber) || 0) - Number(first(b, T.SeriesNumber) || 0))
    : []), [series]);

  useEffect(() => {
    document.title = "Study — DICOM archive";
    document.getElementById("study-title")?.focus();
  }, [uid]);

  return (
    <main class="study-page">
      <p>
        <a href="/ui/" onClick={(e) => { e.preventDefault(); back(); }}>← Back to the search</a>
      </p>
      <h2 id="study-title" tabIndex={-1}>
        {ds ? personName(first(ds, T.PatientName)) || "(no name)" : "Study"}
      </h2>
      {study.kind === "error" && <p class="error" role="alert">{study.error}</p>}
      {study.kind === "done" && !ds && <p class="error" role="alert">No such study.</p>}
      {ds && (
        <dl class="study-facts">
          <Fact label="Patient ID" value={first(ds, T.PatientID)} />
          <Fact label="Birth date" value={dicomDate(first(ds, T.PatientBirthDate))} />
          <Fact label="Sex" value={first(ds, T.PatientSex)} />
          <Fact label="Study date" value={dicomDate(first(ds, T.StudyDate))} />
          <Fact label="Description" value={first(ds, T.StudyDescription)} />
          <Fact label="Accession number" value={first(ds, T.AccessionNumber)} />
          <Fact label="Referring physician" value={personName(first(ds, T.ReferringPhysicianName))} />
          <Fact label="Study UID" value={uid} />
        </dl>
      )}
      {ds && (
        <p class="downloads">
          <Download href={studyZipUrl(uid)} label="Download the study (zip)" />{" "}
          <Download href={studyMediaUrl(uid)} label="for a CD or USB stick (zip with DICOMDIR)" />
        </p>
      )}
      {ds && may(session, "writer") && <PdfUpload study={uid} added={() => setAdded(added + 1)} />}
      <section aria-labelledby="series-title">
        <h3 id="series-title">Series</h3>
        <p class="status" role="status">
          {series.kind === "loading" ? "Loading series…" : series.kind === "done" ? `${series.value.length} series` : ""}
        </p>
        {series.kind === "error" && <p class="error" role="alert">{series.error}</p>}
        <ul class="series-list">
          {sorted.map((s) => {
            const seriesUid = first(s, T.SeriesInstanceUID);
            const modality = first(s, T.Modality);
            const label = `Series ${first(s, T.SeriesNumber) || "?"}: ${first(s, T.SeriesDescription) || modality || "(no description)"}`;
            return (
              <li key={seriesUid} class="series-card">
                {NOT_IMAGES.has(modality) ? <div class="thumb none" aria-hidden="true">{modality}</div>
                  : <Thumbnail src={thumbnailUrl(uid, seriesUid)} alt={`First image of ${label}`} />}
                <div>
                  <strong>{label}</strong>
                  <div>{modality} · {plural(first(s, T.NumberOfSeriesRelatedInstances), "instance")}
                    {first(s, T.BodyPartExamined) ? ` · ${first(s, T.BodyPartExamined)}` : ""}</div>
                  {!NOT_IMAGES.has(modality) && <ViewLink study={uid} series={seriesUid} label={`View ${label}`} />}
                  <button type="button" class="secondary" aria-pressed={chosen === seriesUid}
                    onClick={() => setChosen(chosen === seriesUid ? null : seriesUid)}>
                    Attributes
                  </button>{" "}
                  <Download href={seriesZipUrl(uid, seriesUid)} label={`Download series ${first(s, T.SeriesNumber) || ""} (zip)`} />
                  <ObjectLinks study={uid} series={seriesUid} modality={modality} open={open ?? ((url) => location.assign(url))} />
                </div>
              </li>
            );
          })}
        </ul>
      </section>
      {chosen && <TagBrowser study={uid} series={chosen} />}
    </main>
  );
}

function plural(n: string, noun: string): string {
  return `${n} ${n === "1" ? noun : `${noun}s`}`;
}

function Fact({ label, value }: { label: string; value: string }) {
  return value ? (<div><dt>{label}</dt><dd>{value}</dd></div>) : null;
}

function Thumbnail({ src, alt }: { src: string; alt: string }) {
  const [failed, setFailed] = useState(false);
  return failed ? <div class="thumb none">no image</div>
    : <AuthImage class="thumb" src={src} alt={alt} width={128} height={128} onError={() => setFailed(true)} />;
}

interface Row {
  depth: number;
  tag: string; // "" for an item row
  keyword: string;
  vr: string;
  text: string;
  parents: number[];
}

function rowsOf(ds: DicomJson, dictionary: Record<string, string>, depth = 0, parents: number[] = [], out: Row[] = []): Row[] {
  for (const tag of Object.keys(ds).sort()) {
    const element: DicomElement = ds[tag];
    const group = Number.parseInt(tag.slice(0, 4), 16);
    const keyword = dictionary[tag.toUpperCase()] ?? (group % 2 === 1 ? "(private)" : "(unknown)");
    const index = out.length;
    let text: string;
    if (element.vr === "SQ") {
      const items = (element.Value ?? []) as DicomJson[];
      text = `${items.length} ${items.length === 1 ? "item" : "items"}`;
      out.push({ depth, tag, keyword, vr: element.vr, text, parents });
      items.forEach((item, i) => {
        const at = out.length;
        out.push({ depth: depth + 1, tag: "", keyword: `Item ${i + 1}`, vr: "", text: "", parents: [...parents, index] });
        rowsOf(item, dictionary, depth + 2, [...parents, index, at], out);
      });
      continue;
    }
    if (element.BulkDataURI !== undefined) text = "(bulk data, not shown)";
    else if (element.InlineBinary !== undefined) text = `(binary, ${Math.floor((element.InlineBinary.length * 3) / 4)} bytes)`;
    else text = (element.Value ?? []).map((v) => valueText(element.vr, v)).join(" \\ ");
    out.push({ depth, tag, keyword, vr: element.vr, text, parents });
  }
  return out;
}

function tagLabel(tag: string): string {
  return tag ? `(${tag.slice(0, 4)},${tag.slice(4)})` : "";
}

function TagBrowser({ study, series }: { study: string; series: string }) {
  const instances = useLoad((signal) => instancesOf(study, series, signal), [study, series]);
  const [instance, setInstance] = useState<string>("");
  const [filter, setFilter] = useState("");
  const [dictionary, setDictionary] = useState<Record<string, string>>({});
  useEffect(() => {
    // the keyword dictionary is its own (hashed) file, loaded when a tag browser first opens
    import("./dictionary.json").then((m) => setDictionary(m.default as Record<string, string>), () => undefined);
  }, []);
  const sorted = useMemo(() => (instances.kind === "done"
    ? [...instances.value].sort((a, b) => Number(first(a, T.InstanceNumber) || 0) - Number(first(b, T.InstanceNumber) || 0))
    : []), [instances]);
  const current = instance || (sorted[0] ? first(sorted[0], T.SOPInstanceUID) : "");
  const metadata = useLoad((signal) => (current ? metadataOf(study, series, current, signal) : Promise.resolve([])),
    [study, series, current]);
  const rows = useMemo(() => (metadata.kind === "done" && metadata.value[0] ? rowsOf(metadata.value[0], dictionary) : []),
    [metadata, dictionary]);
  const shown = useMemo(() => {
    const needle = filter.trim().toLowerCase().replace(/[(),\s]/g, "");
    if (!needle) return rows;
    const keep = new Set<number>();
    rows.forEach((row, i) => {
      const hay = `${row.tag.toLowerCase()} ${row.keyword.toLowerCase()} ${row.text.toLowerCase()}`;
      if (row.tag && hay.includes(needle)) {
        keep.add(i);
        row.parents.forEach((p) => keep.add(p));
      }
    });
    return rows.filter((_, i) => keep.has(i));
  }, [rows, filter]);

  return (
    <section class="tags" aria-labelledby="tags-title">
      <h3 id="tags-title">Attributes</h3>
      <div class="tag-controls">
        <div class="field">
          <label for="instance">Instance</label>
          <select id="instance" value={current} onChange={(e) => setInstance(e.currentTarget.value)}>
            {sorted.map((i) => (
              <option key={first(i, T.SOPInstanceUID)} value={first(i, T.SOPInstanceUID)}>
                Instance {first(i, T.InstanceNumber) || "?"}
              </option>
            ))}
          </select>
        </div>
        {current && <Download href={instanceUrl(study, series, current)} label="Download this instance (.dcm)" />}
        <div class="field">
          <label for="tag-filter">Filter by keyword, tag or value</label>
          <input id="tag-filter" type="search" value={filter} autoComplete="off"
            onInput={(e) => setFilter(e.currentTarget.value)} />
        </div>
      </div>
      <p class="status" role="status">
        {metadata.kind === "loading" ? "Loading attributes…" : `${shown.filter((r) => r.tag).length} attributes`}
      </p>
      {metadata.kind === "error" && <p class="error" role="alert">{metadata.error}</p>}
      <table class="tag-table">
        <thead>
          <tr><th scope="col">Tag</th><th scope="col">Keyword</th><th scope="col">VR</th><th scope="col">Value</th></tr>
        </thead>
        <tbody>
          {shown.map((row, i) => (
            <tr key={`${i}-${row.tag}`} class={row.tag ? "" : "item"}>
              <td class={`depth-${Math.min(row.depth, 8)}`}>{tagLabel(row.tag)}</td>
              <td class={row.tag ? "" : `depth-${Math.min(row.depth, 8)}`}>{row.keyword}</td>
              <td>{row.vr}</td>
              <td>{row.text}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
