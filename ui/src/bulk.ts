// The bytes of one element of an instance, from its WADO-RS metadata: InlineBinary (base64, small
// values) or its BulkDataURI (PS3.18 8.7.3.3: multipart/related; type="application/octet-stream",
// one part holding the value as stored). Fetched with the page's token when signed in.
import { authorizedFetch } from "./auth";
import type { DicomElement } from "./api";

export class BulkError extends Error {}

function base64Bytes(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

function indexOf(haystack: Uint8Array, needle: Uint8Array, from: number): number {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** The body of the first part of a multipart/related response (RFC 2046 5.1.1). */
export function firstPart(body: Uint8Array, contentType: string): Uint8Array {
  const match = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!match) return body; // not multipart: the value itself
  const encoder = new TextEncoder();
  const start = indexOf(body, encoder.encode(`--${match[1]}`), 0);
  if (start < 0) throw new BulkError("the bulk data response has no part");
  const headersEnd = indexOf(body, encoder.encode("\r\n\r\n"), start);
  if (headersEnd < 0) throw new BulkError("the bulk data part has no header end");
  const from = headersEnd + 4;
  const end = indexOf(body, encoder.encode(`\r\n--${match[1]}`), from);
  if (end < 0) throw new BulkError("the bulk data part is not closed");
  return body.subarray(from, end);
}

/** The value of an OB/OW/UN element as bytes (little endian, as stored). */
export async function elementBytes(element: DicomElement | undefined, signal?: AbortSignal): Promise<Uint8Array> {
  if (!element) throw new BulkError("the element is absent");
  if (element.InlineBinary !== undefined) return base64Bytes(element.InlineBinary);
  if (element.BulkDataURI === undefined) return new Uint8Array(0);
  const url = new URL(element.BulkDataURI, location.href);
  if (url.origin !== location.origin) throw new BulkError("the bulk data is on another origin");
  const response = await authorizedFetch(url.pathname, {
    signal, headers: { Accept: 'multipart/related; type="application/octet-stream"' },
  });
  if (!response.ok) throw new BulkError(`the bulk data could not be read (HTTP ${response.status})`);
  const body = new Uint8Array(await response.arrayBuffer());
  return firstPart(body, response.headers.get("Content-Type") ?? "");
}
