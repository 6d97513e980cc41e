// A Structured Report (PS3.3 C.17.3, SR Document Content) as readable text: the ContentSequence
// walked from the WADO-RS metadata. CONTAINERs become headings, every other content item a line
// "concept: value" (TEXT, CODE, NUM with its units, DATE, TIME, DATETIME, PNAME, UIDREF, references
// and coordinates), nested items under their parent with the relationship when it is not CONTAINS.
// Every value is rendered as text (JSX escapes it).
import type { DicomElement, DicomJson } from "./api";
import { dicomDate, first, personName } from "./format";

const T = {
  ValueType: "0040A040", RelationshipType: "0040A010", ConceptName: "0040A043", TextValue: "0040A160",
  ConceptCode: "0040A168", MeasuredValue: "0040A300", NumericValue: "0040A30A", Units: "004008EA",
  Qualifier: "0040A301", Date: "0040A121", Time: "0040A122", DateTime: "0040A120", PersonName: "0040A123",
  Uid: "0040A124", Content: "0040A730", CodeMeaning: "00080104", CodeValue: "00080100",
  CodingScheme: "00080102", Completion: "0040A491", Verification: "0040A493", ReferencedSOP: "00081199",
  ReferencedSOPInstance: "00081155", GraphicType: "00700023", GraphicData: "00700022",
  VerifyingObserver: "0040A073", VerifyingObserverName: "0040A075", VerificationDateTime: "0040A030",
  ContentDate: "00080023", ContentTime: "00080033", SeriesDescription: "0008103E",
};

const RELATIONSHIP: Record<string, string> = {
  "HAS PROPERTIES": "has properties", "HAS OBS CONTEXT": "observation context",
  "HAS ACQ CONTEXT": "acquisition context", "HAS CONCEPT MOD": "concept modifier",
  "INFERRED FROM": "inferred from", "SELECTED FROM": "selected from",
};

function items(ds: DicomJson, tag: string): DicomJson[] {
  const element: DicomElement | undefined = ds[tag];
  return (element?.Value ?? []) as DicomJson[];
}

/** A code as people read it: its meaning, else value (scheme). */
export function codeText(code: DicomJson | undefined): string {
  if (!code) return "";
  return first(code, T.CodeMeaning) || `${first(code, T.CodeValue)} (${first(code, T.CodingScheme)})`;
}

function time(value: string): string {
  return /^[0-9]{4}/.test(value) ? `${value.slice(0, 2)}:${value.slice(2, 4)}${value.length >= 6 ? `:${value.slice(4, 6)}` : ""}` : value;
}

function dateTime(value: string): string {
  return value.length >= 8 ? `${dicomDate(value.slice(0, 8))} ${time(value.slice(8))}`.trim() : value;
}

function numeric(item: DicomJson): string {
  const measured = items(item, T.MeasuredValue)[0];
  if (!measured) {
    const qualifier = items(item, T.Qualifier)[0];
    return qualifier ? `(${codeText(qualifier)})` : "(no value)";
  }
  const units = items(measured, T.Units)[0];
  const unit = units ? first(units, T.CodeMeaning) || first(units, T.CodeValue) : "";
  return `${first(measured, T.NumericValue)}${unit && unit !== "no units" ? ` ${unit}` : ""}`;
}

/** The value of a content item as text (empty for a CONTAINER). */
export function itemValue(item: DicomJson): string {
  const type = first(item, T.ValueType);
  switch (type) {
    case "TEXT": return first(item, T.TextValue);
    case "CODE": return codeText(items(item, T.ConceptCode)[0]);
    case "NUM": return numeric(item);
    case "DATE": return dicomDate(first(item, T.Date));
    case "TIME": return time(first(item, T.Time));
    case "DATETIME": return dateTime(first(item, T.DateTime));
    case "PNAME": return personName(first(item, T.PersonName));
    case "UIDREF": return first(item, T.Uid);
    case "IMAGE": case "COMPOSITE": case "WAVEFORM": {
      const ref = items(item, T.ReferencedSOP)[0];
      return `${type.toLowerCase()} ${ref ? first(ref, T.ReferencedSOPInstance) : ""}`.trim();
    }
    case "SCOORD": case "SCOORD3D": {
      const points = item[T.GraphicData]?.Value ?? [];
      return `${first(item, T.GraphicType).toLowerCase()} (${points.length} coordinates)`;
    }
    case "CONTAINER": return "";
    default: return type ? `(${type})` : "";
  }
}

function Item({ item, depth }: { item: DicomJson; depth: number }) {
  const type = first(item, T.ValueType);
  const concept = codeText(items(item, T.ConceptName)[0]);
  const relationship = RELATIONSHIP[first(item, T.RelationshipType)];
  const children = items(item, T.Content);
  const nested = children.length > 0 && (
    <ul class="sr-items">
      {children.map((child, i) => <Item key={i} item={child} depth={depth + 1} />)}
    </ul>
  );
  if (type === "CONTAINER") {
    const Heading = (`h${Math.min(depth + 3, 6)}`) as "h3";
    return (
      <li class="sr-container">
        <Heading class="sr-heading">{concept || "(untitled section)"}</Heading>
        {nested}
      </li>
    );
  }
  return (
    <li class="sr-item" data-type={type}>
      {relationship && <span class="sr-relationship">{relationship}: </span>}
      {concept && <span class="sr-concept">{concept}: </span>}
      <span class="sr-value">{itemValue(item)}</span>
      {nested}
    </li>
  );
}

/** The report: title, flags, observers, and its content tree. */
export function StructuredReport({ ds }: { ds: DicomJson }) {
  const title = codeText(items(ds, T.ConceptName)[0]) || "Structured report";
  const observers = items(ds, T.VerifyingObserver);
  const completion = first(ds, T.Completion);
  const verification = first(ds, T.Verification);
  return (
    <article class="sr" aria-labelledby="sr-title">
      <h3 id="sr-title">{title}</h3>
      <dl class="study-facts sr-flags">
        {completion && <div><dt>Completion</dt><dd>{completion.toLowerCase()}</dd></div>}
        {verification && <div><dt>Verification</dt><dd>{verification.toLowerCase()}</dd></div>}
        {observers.map((o, i) => (
          <div key={i}><dt>Verified by</dt>
            <dd>{personName(first(o, T.VerifyingObserverName))} {dateTime(first(o, T.VerificationDateTime))}</dd></div>
        ))}
        {first(ds, T.ContentDate) && (
          <div><dt>Content date</dt><dd>{dicomDate(first(ds, T.ContentDate))} {time(first(ds, T.ContentTime))}</dd></div>
        )}
      </dl>
      <ul class="sr-items sr-root">
        {items(ds, T.Content).map((child, i) => <Item key={i} item={child} depth={1} />)}
      </ul>
    </article>
  );
}
