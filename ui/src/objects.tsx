// Non-image objects shown as what they are (objectpage.tsx, loaded when one is opened, at
// /ui/study/<study>/series/<series>/instance/<instance>: UIDs only): which SOP classes are shown,
// and the study page's links to them (ObjectLinks).
import { useEffect, useState } from "preact/hooks";
import { instancesOf, type DicomJson } from "./api";
import { first } from "./format";
import "./objects.css";

const T = { SOPClassUID: "00080016", SOPInstanceUID: "00080018", InstanceNumber: "00200013" };

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

export const KIND_LABEL: Record<ObjectKind, string> = { pdf: "PDF document", sr: "Report", audio: "Audio" };

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
