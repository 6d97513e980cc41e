// A small DICOM Part 10 writer (PS3.10 7.1, PS3.5 7.1.2): Explicit VR Little Endian, the elements
// given (no sequences with items: an empty SQ at most), enough to wrap a document as a new instance
// in the browser. Text is UTF-8 (the caller sets Specific Character Set ISO_IR 192).

export type Element = { tag: number; vr: string; value: string | Uint8Array | number | null };

export const EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1";
const IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1437.2"; // dicom-archive's web UI
const IMPLEMENTATION_VERSION = "DICOMARCHIVEUI";
// PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 4-byte length
const LONG = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const ASCII_ONLY = new Set(["AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"]);
const utf8 = new TextEncoder();

export class EncodeError extends Error {}

function valueBytes(element: Element): Uint8Array {
  const { vr, value } = element;
  if (value === null) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (typeof value === "number") {
    const view = new DataView(new ArrayBuffer(vr === "UL" ? 4 : 2));
    if (vr === "UL") view.setUint32(0, value, true);
    else if (vr === "US") view.setUint16(0, value, true);
    else throw new EncodeError(`a number for VR ${vr}`);
    return new Uint8Array(view.buffer);
  }
  if (ASCII_ONLY.has(vr) && !/^[\x20-\x7e]*$/.test(value)) {
    throw new EncodeError(`(${hex(element.tag)}) ${vr}: only ASCII is allowed`);
  }
  return utf8.encode(value);
}

function hex(tag: number): string {
  const t = tag.toString(16).toUpperCase().padStart(8, "0");
  return `${t.slice(0, 4)},${t.slice(4)}`;
}

/** One element: tag, VR, length, value padded to even length (PS3.5 7.1.2, 6.2). */
export function encodeElement(element: Element): Uint8Array {
  let bytes = valueBytes(element);
  if (bytes.length % 2 === 1) {
    const padded = new Uint8Array(bytes.length + 1);
    padded.set(bytes);
    // UI and binary values pad with NUL, text with a space
    padded[bytes.length] = element.vr === "UI" || element.vr === "OB" || element.vr === "UN" ? 0x00 : 0x20;
    bytes = padded;
  }
  const long = LONG.has(element.vr);
  if (!long && bytes.length > 0xffff) throw new EncodeError(`(${hex(element.tag)}) is too long for VR ${element.vr}`);
  const head = new DataView(new ArrayBuffer(long ? 12 : 8));
  head.setUint16(0, element.tag >>> 16, true);
  head.setUint16(2, element.tag & 0xffff, true);
  head.setUint8(4, element.vr.charCodeAt(0));
  head.setUint8(5, element.vr.charCodeAt(1));
  if (long) head.setUint32(8, bytes.length, true);
  else head.setUint16(6, bytes.length, true);
  const out = new Uint8Array(head.byteLength + bytes.length);
  out.set(new Uint8Array(head.buffer));
  out.set(bytes, head.byteLength);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A Part 10 file: preamble, DICM, File Meta Information (group 0002), then the dataset. */
export function part10(elements: Element[], sopClass: string, sopInstance: string): Uint8Array {
  const meta = [
    { tag: 0x00020001, vr: "OB", value: new Uint8Array([0, 1]) },
    { tag: 0x00020002, vr: "UI", value: sopClass },
    { tag: 0x00020003, vr: "UI", value: sopInstance },
    { tag: 0x00020010, vr: "UI", value: EXPLICIT_VR_LITTLE_ENDIAN },
    { tag: 0x00020012, vr: "UI", value: IMPLEMENTATION_CLASS_UID },
    { tag: 0x00020013, vr: "SH", value: IMPLEMENTATION_VERSION },
  ].map(encodeElement);
  const metaLength = meta.reduce((n, e) => n + e.length, 0);
  const sorted = [...elements].sort((a, b) => a.tag - b.tag);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].tag === sorted[i - 1].tag) throw new EncodeError(`(${hex(sorted[i].tag)}) given twice`);
  }
  const preamble = new Uint8Array(132);
  preamble.set(utf8.encode("DICM"), 128);
  return concat([
    preamble,
    encodeElement({ tag: 0x00020000, vr: "UL", value: metaLength }),
    ...meta,
    ...sorted.map(encodeElement),
  ]);
}

/** A new UID: 2.25 and a random (version 4) UUID as a decimal integer (PS3.5 B.2, ISO/IEC 9834-8). */
export function uuidUid(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // also on plain http, unlike randomUUID
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hexDigits = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `2.25.${BigInt(`0x${hexDigits}`).toString()}`;
}
