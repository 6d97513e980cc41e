// The page of one non-image object (see objects.tsx): an encapsulated PDF drawn by pdf.js (itself
// loaded only when a PDF is opened), a structured report as text, an audio waveform played from a
// WAV made in the browser.
import { lazy, Suspense } from "preact/compat";
import { useEffect, useState } from "preact/hooks";
import { ApiError, metadataOf, type DicomJson } from "./api";
import { elementBytes } from "./bulk";
import { first } from "./format";
import { KIND_LABEL, objectKind } from "./objects";
import { StructuredReport } from "./sr";
import { pcm16, wav, type Waveform } from "./waveform";

const PdfView = lazy(() => import("./pdfview"));

const T = {
  SOPClassUID: "00080016", DocumentTitle: "00420010", EncapsulatedDocument: "00420011",
  WaveformSequence: "54000100", Interpretation: "54001006", Frequency: "003A001A", Channels: "003A0005",
  Samples: "003A0010", WaveformData: "54001010", SeriesDescription: "0008103E",
};

type Load = { kind: "loading" } | { kind: "done"; ds: DicomJson } | { kind: "error"; error: string };

export default function ObjectPage({ study, series, instance, back }: {
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
