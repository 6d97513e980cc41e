// Add a PDF report to a study (writers only): the chosen file is wrapped in the browser as an
// Encapsulated PDF instance (PS3.3 A.45.1; SOP Class 1.2.840.10008.5.1.4.1.1.104.1) in a new
// series (Modality DOC), with the study's patient and study attributes taken from the stored
// metadata of one of its instances, and sent through STOW-RS to this study (PS3.18 10.5).
// The STOW-RS service takes Part 10 files (application/dicom), so part10.ts writes one.
import { useState } from "preact/hooks";
import { authorizedFetch } from "./auth";
import { instancesOf, metadataOf, seriesOf, type DicomJson } from "./api";
import { first, valueText } from "./format";
import { part10, uuidUid, type Element } from "./part10";

export const ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1";
const MAX_BYTES = 64 * 1024 * 1024;

// The Patient and General Study attributes copied from the study: tag, VR
const COPIED: [number, string][] = [
  [0x00080020, "DA"], [0x00080030, "TM"], [0x00080050, "SH"], [0x00080090, "PN"],
  [0x00100010, "PN"], [0x00100020, "LO"], [0x00100030, "DA"], [0x00100040, "CS"],
  [0x00200010, "SH"],
];

function tagKey(tag: number): string {
  return tag.toString(16).toUpperCase().padStart(8, "0");
}

/** The element's values as PS3.5 writes them (multiple values joined by a backslash). */
function stringOf(ds: DicomJson, tag: number): string | null {
  const element = ds[tagKey(tag)];
  if (!element) return null;
  return (element.Value ?? []).map((v) => valueText(element.vr, v)).join("\\");
}

function now(): { date: string; time: string } {
  const d = new Date();
  const two = (n: number) => String(n).padStart(2, "0");
  return {
    date: `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}`,
    time: `${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`,
  };
}

/** The dataset of the new instance. */
export function encapsulatedPdf(study: DicomJson, studyUid: string, pdf: Uint8Array, title: string,
  seriesNumber: number): { file: Uint8Array; series: string; instance: string } {
  const series = uuidUid();
  const instance = uuidUid();
  const { date, time } = now();
  const elements: Element[] = [
    { tag: 0x00080005, vr: "CS", value: "ISO_IR 192" },
    { tag: 0x00080016, vr: "UI", value: ENCAPSULATED_PDF },
    { tag: 0x00080018, vr: "UI", value: instance },
    { tag: 0x00080023, vr: "DA", value: date },
    { tag: 0x00080033, vr: "TM", value: time },
    { tag: 0x0008002a, vr: "DT", value: `${date}${time}` },
    { tag: 0x00080060, vr: "CS", value: "DOC" },
    { tag: 0x00080064, vr: "CS", value: "WSD" }, // Conversion Type: workstation
    { tag: 0x00080070, vr: "LO", value: null },
    { tag: 0x0008103e, vr: "LO", value: "PDF report" },
    { tag: 0x0020000d, vr: "UI", value: studyUid },
    { tag: 0x0020000e, vr: "UI", value: series },
    { tag: 0x00200011, vr: "IS", value: String(seriesNumber) },
    { tag: 0x00200013, vr: "IS", value: "1" },
    { tag: 0x00280301, vr: "CS", value: "YES" }, // Burned In Annotation: a report names the patient
    { tag: 0x0040a043, vr: "SQ", value: null }, // Concept Name Code Sequence (type 2, empty)
    { tag: 0x00420010, vr: "ST", value: title },
    { tag: 0x00420011, vr: "OB", value: pdf },
    { tag: 0x00420012, vr: "LO", value: "application/pdf" },
    { tag: 0x00420015, vr: "UL", value: pdf.length },
  ];
  for (const [tag, vr] of COPIED) elements.push({ tag, vr, value: stringOf(study, tag) });
  return { file: part10(elements, ENCAPSULATED_PDF, instance), series, instance };
}

/** The stored attributes of one instance of the study (its patient and study attributes). */
async function studyAttributes(study: string): Promise<{ ds: DicomJson; seriesCount: number }> {
  const series = await seriesOf(study);
  for (const s of series) {
    const instances = await instancesOf(study, first(s, "0020000E"));
    if (instances[0]) {
      const [ds] = await metadataOf(study, first(s, "0020000E"), first(instances[0], "00080018"));
      if (ds) {
        const numbers = series.map((x) => Number(first(x, "00200011")) || 0);
        return { ds, seriesCount: Math.max(0, ...numbers) };
      }
    }
  }
  throw new Error("the study has no instance to take the patient from");
}

async function stow(study: string, file: Uint8Array): Promise<void> {
  const boundary = `pdf-${uuidUid()}`;
  const body = new Blob([`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file.slice().buffer as ArrayBuffer,
    `\r\n--${boundary}--\r\n`]);
  const response = await authorizedFetch(`/dicom-web/studies/${encodeURIComponent(study)}`, {
    method: "POST", body,
    headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: "application/dicom+json" },
  });
  if (response.status === 401 || response.status === 403) throw new Error(`not allowed to upload (HTTP ${response.status})`);
  const answer = (await response.json().catch(() => ({}))) as DicomJson & { error?: string };
  if (typeof answer.error === "string") throw new Error(answer.error);
  if ((answer["00081198"]?.Value ?? []).length || !(answer["00081199"]?.Value ?? []).length) {
    throw new Error(`the archive did not store it (HTTP ${response.status})`);
  }
}

/** Until the catalog lists the new series (indexing follows storing), at most ~30 s. */
async function waitForSeries(study: string, series: string): Promise<boolean> {
  for (let i = 0; i < 60; i++) {
    const found = await seriesOf(study).catch(() => []);
    if (found.some((s) => first(s, "0020000E") === series)) return true;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return false;
}

type State = { kind: "idle" } | { kind: "busy"; text: string } | { kind: "done"; text: string } | { kind: "error"; text: string };

export function PdfUpload({ study, added }: { study: string; added: () => void }) {
  const [state, setState] = useState<State>({ kind: "idle" });
  const onChange = async (event: Event) => {
    const input = event.currentTarget as HTMLInputElement;
    const file = input.files?.[0];
    input.value = "";
    if (!file) return;
    try {
      if (file.size > MAX_BYTES) throw new Error("the file is larger than 64 MB");
      setState({ kind: "busy", text: `Adding ${file.name}…` });
      const pdf = new Uint8Array(await file.arrayBuffer());
      if (new TextDecoder().decode(pdf.subarray(0, 5)) !== "%PDF-") throw new Error("the file is not a PDF");
      const { ds, seriesCount } = await studyAttributes(study);
      const title = file.name.replace(/\.pdf$/i, "").slice(0, 1024);
      const made = encapsulatedPdf(ds, study, pdf, title, seriesCount + 1);
      await stow(study, made.file);
      setState({ kind: "busy", text: `${file.name} is stored; waiting for the archive to index it…` });
      const listed = await waitForSeries(study, made.series);
      setState({ kind: "done", text: listed ? `${file.name} was added to the study.` : `${file.name} is stored; it shows once the archive has indexed it.` });
      added();
    } catch (error) {
      setState({ kind: "error", text: `${file.name} was not added: ${error instanceof Error ? error.message : String(error)}` });
    }
  };
  return (
    <div class="pdf-upload">
      <label for="pdf-upload">Add a PDF report to this study</label>
      <input id="pdf-upload" type="file" accept="application/pdf,.pdf" disabled={state.kind === "busy"}
        onChange={(e) => void onChange(e)} />
      <p class={state.kind === "error" ? "error" : "status"} aria-live="polite">
        {state.kind === "idle" ? "" : state.text}
      </p>
    </div>
  );
}
