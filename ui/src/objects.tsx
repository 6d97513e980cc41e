// Non-image objects shown as what they are, at /ui/study/<study>/series/<series>/instance/<instance>
// (UIDs only): an encapsulated PDF drawn by pdf.js (loaded only when one is opened), a structured
// report as text, an audio waveform played from a WAV made in the browser. The study page links
// here from the series of these objects (ObjectLinks).
import { lazy, Suspense } from "preact/compat";
import { useEffect, useState } from "preact/hooks";
import { ApiError, instancesOf, metadataOf, type DicomJson } from "./api";
import { elementBytes } from "./bulk";
import { first } from "./format";
import { StructuredReport } from "./sr";
import { pcm16, wav, type Waveform } from "./waveform";
import "./objects.css";

const PdfView = lazy(() => import("./pdfview"));

const T = {
  SOPClassUID: "00080016", SOPInstanceUID: "00080018", InstanceNumber: "00200013", Modality: "00080060",
  DocumentTitle: "00420010", EncapsulatedDocument: "00420011", MIMEType: "00420012",
  WaveformSequence: "54000100", Interpretation: "54001006", Frequency: "003A001A", Channels: "003A0005",
  Samples: "003A0010", WaveformData: "54001010", SeriesDescription: "0008103E",
};

const PDF = "1.2.840.10008.5.1.4.1.1.104.1";
const AUDIO = new Set(["1.2.840.10008.5.1.4.1.1.9.4.1", "1.2.840.10008.5.1.4.1.1.9.4.2"]); // Basic Voice, General Audio
// PS3.4 B.5: the SR storage classes (text, enhanced, comprehensive, 3D, extensible, key objects,
// measurement reports of TID 1500 travel in Comprehensive or Enhanced SR) and other SR documents
const SR = new Set([
  "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
  "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.40",
  "1.2.840.10008.5.1.4.1.1.88.50", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.88.65",
  "1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68", "1.2.840.10008.5.1.4.1.1.88.69",
  "1.2.840.10008.5.1.4.1.1.88.70", "1.2.840.10008.5.1.4.1.1.88.71", "1.2.840.10008.5.1.4.1.1.88.72",
  "1.2.840.10008.5.1.4.1.1.88.73", "1.2.840.10008.5.1.4.1.1.88.74", "1.2.840.10008.5.1.4.1.1.88.75",
  "1.2.840.10008.5.1.4.1.1.88.76",
]);
// Modalities whose series may hold such objects (the study page lists their instances)
const OBJECT_MODALITIES = new Set(["SR", "DOC", "AU", "KO", "OT"]);

export type ObjectKind = "pdf" | "sr" | "audio";

export function objectKind(sopClass: string): ObjectKind | null {
  if (sopClass === PDF) return "pdf";
  if (SR.has(sopClass)) return "sr";
  if (AUDIO.has(sopClass)) return "audio";
  return null;
}

const KIND_LABEL: Record<ObjectKind, string> = { pdf: "PDF document", sr: "Report", audio: "Audio" };

export function objectUrl(study: string, series: string, instance: string): string {
  return `/ui/study/${study}/series/${series}/instance/${instance}`;
}

/** Links to the shown objects of a series (nothing for a series without any). */
export function ObjectLinks({ study, series, modality, open }: {
  study: string; series: string; modality: string; open: (url: string) => void;
}) {
  const [found, setFound] = useState<DicomJson[]>([]);
  useEffect(() => {
    if (!OBJECT_MODALITIES.has(modality)) return;
    const abort = new AbortController();
    instancesOf(study, series, abort.signal).then(
      (list) => setFound(list.filter((i) => objectKind(first(i, T.SOPClassUID)) !== null)
        .sort((a, b) => Number(first(a, T.InstanceNumber) || 0) - Number(first(b, T.InstanceNumber) || 0))),
      () => undefined, // the series card still shows; the tag browser says what failed
    );
    return () => abort.abort();
  }, [study, series, modality]);
  if (found.length === 0) return null;
  return (
    <ul class="object-links">
      {found.map((i) => {
        const uid = first(i, T.SOPInstanceUID);
        const url = objectUrl(study, series, uid);
        const kind = objectKind(first(i, T.SOPClassUID)) as ObjectKind;
        return (
          <li key={uid}>
            <a href={url} onClick={(e) => { e.preventDefault(); open(url); }}>
              Open {KIND_LABEL[kind].toLowerCase()}{found.length > 1 ? ` ${first(i, T.InstanceNumber) || ""}` : ""}
            </a>
          </li>
        );
      })}
    </ul>
  );
}

type Load = { kind: "loading" } | { kind: "done"; ds: DicomJson } | { kind: "error"; error: string };

export function ObjectPage({ study, series, instance, back }: {
  study: string; series: string; instance: string; back: () => void;
}) {
  const [state, setState] = useState<Load>({ kind: "loading" });
  useEffect(() => {
    document.title = "Object — DICOM archive";
    document.getElementById("object-title")?.focus();
    const abort = new AbortController();
    setState({ kind: "loading" });
    metadataOf(study, series, instance, abort.signal).then(
      (list) => setState(list[0] ? { kind: "done", ds: list[0] } : { kind: "error", error: "No such instance." }),
      (e: unknown) => abort.signal.aborted || setState({ kind: "error", error: e instanceof ApiError ? e.message : String(e) }),
    );
    return () => abort.abort();
  }, [study, series, instance]);
  const ds = state.kind === "done" ? state.ds : undefined;
  const kind = ds ? objectKind(first(ds, T.SOPClassUID)) : null;
  return (
    <main class="object-page">
      <p>
        <a href={`/ui/study/${study}`} onClick={(e) => { e.preventDefault(); back(); }}>← Back to the study</a>
      </p>
      <h2 id="object-title" tabIndex={-1}>{kind ? KIND_LABEL[kind] : "Object"}</h2>
      <p class="status" role="status">{state.kind === "loading" ? "Loading the object…" : ""}</p>
      {state.kind === "error" && <p class="error" role="alert">{state.error}</p>}
      {ds && !kind && <p class="error" role="alert">This kind of object (SOP Class {first(ds, T.SOPClassUID)}) is not shown here.</p>}
      {ds && kind === "sr" && <StructuredReport ds={ds} />}
      {ds && kind === "pdf" && <PdfObject ds={ds} />}
      {ds && kind === "audio" && <AudioObject ds={ds} />}
    </main>
  );
}

function PdfObject({ ds }: { ds: DicomJson }) {
  const [data, setData] = useState<Uint8Array | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const abort = new AbortController();
    // a value of odd length carries one byte of padding (PS3.5 7.1.1): PDF readers ignore it
    elementBytes(ds[T.EncapsulatedDocument], abort.signal).then(
      setData,
      (e: unknown) => abort.signal.aborted || setError(String(e)),
    );
    return () => abort.abort();
  }, [ds]);
  const title = first(ds, T.DocumentTitle) || "PDF document";
  if (error) return <p class="error" role="alert">The document could not be read: {error}</p>;
  if (!data) return <p class="status" role="status">Loading the document…</p>;
  return (
    <Suspense fallback={<p class="status" role="status">Loading the PDF viewer…</p>}>
      <PdfView data={data} title={title} />
    </Suspense>
  );
}

interface Track {
  wave: Waveform;
  url: string;
}

function AudioObject({ ds }: { ds: DicomJson }) {
  const [tracks, setTracks] = useState<Track[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const abort = new AbortController();
    const groups = (ds[T.WaveformSequence]?.Value ?? []) as DicomJson[];
    const urls: string[] = [];
    Promise.all(groups.map(async (group) => {
      const wave: Waveform = {
        channels: Number(first(group, T.Channels)) || 1,
        samples: Number(first(group, T.Samples)) || 0,
        frequency: Number(first(group, T.Frequency)) || 8000,
        interpretation: first(group, T.Interpretation),
      };
      const data = await elementBytes(group[T.WaveformData], abort.signal);
      const url = URL.createObjectURL(wav(pcm16(data, wave), wave.channels, wave.frequency));
      urls.push(url);
      return { wave, url };
    })).then(setTracks, (e: unknown) => abort.signal.aborted || setError(String(e)));
    return () => {
      abort.abort();
      urls.forEach((u) => URL.revokeObjectURL(u));
    };
  }, [ds]);
  if (error) return <p class="error" role="alert">The audio could not be decoded: {error}</p>;
  if (tracks.length === 0) return <p class="status" role="status">Decoding the audio…</p>;
  return (
    <section class="audio" aria-labelledby="audio-title">
      <h3 id="audio-title">{first(ds, T.SeriesDescription) || "Recording"}</h3>
      {tracks.map(({ wave, url }, i) => (
        <figure key={url} class="audio-track">
          <audio controls preload="metadata" src={url} aria-label={`Recording ${i + 1}`} />
          <figcaption>
            {(wave.samples / wave.frequency).toFixed(1)} s · {wave.channels} {wave.channels === 1 ? "channel" : "channels"} ·{" "}
            {wave.frequency} Hz · {ENCODING[wave.interpretation] ?? wave.interpretation}
          </figcaption>
        </figure>
      ))}
    </section>
  );
}

const ENCODING: Record<string, string> = {
  SB: "8-bit PCM", UB: "8-bit PCM (unsigned)", SS: "16-bit PCM", US: "16-bit PCM (unsigned)",
  MB: "µ-law", AB: "A-law",
};
