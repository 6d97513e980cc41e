// The stack viewer's data: a series' frames in display order (from its WADO-RS metadata), each
// frame's pixels fetched once as uncompressed little endian through WADO-RS frames (the server
// decodes every compressed syntax it stores, so the page needs no codec), and a prefetcher that
// loads the whole series with a few requests in flight, nearest to the shown frame first.
import { authorizedFetch } from "./auth";
import { ApiError, type DicomJson } from "./api";

const T = {
  SOPInstanceUID: "00080018", InstanceNumber: "00200013", ImagePositionPatient: "00200032",
  ImageOrientationPatient: "00200037", NumberOfFrames: "00280008", SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004", PlanarConfiguration: "00280006", Rows: "00280010", Columns: "00280011",
  BitsAllocated: "00280100", BitsStored: "00280101", PixelRepresentation: "00280103",
  WindowCenter: "00281050", WindowWidth: "00281051", WindowExplanation: "00281055",
  RescaleIntercept: "00281052", RescaleSlope: "00281053", SeriesDescription: "0008103E", Modality: "00080060",
  PixelData: "7FE00010",
  // enhanced multi-frame objects (PS3.3 C.7.6.16): the rescale and the window per frame or shared
  SharedFunctionalGroups: "52009229", PerFrameFunctionalGroups: "52009230",
  PixelValueTransformation: "00289145", FrameVOILUT: "00289132",
};

/** PS3.5 A.4 (Explicit VR Little Endian): what the frames are asked for, whatever is stored. */
export const EXPLICIT_LE = "1.2.840.10008.1.2.1";
const FRAME_ACCEPT = `multipart/related; type="application/octet-stream"; transfer-syntax=${EXPLICIT_LE}`;

export interface Preset {
  label: string;
  center: number;
  width: number;
}

/** How one instance's pixels are laid out and mapped to values (PS3.3 C.7.6.3, C.11.1, C.11.2). */
export interface ImageFormat {
  rows: number;
  columns: number;
  samples: number; // 1 or 3
  photometric: string; // MONOCHROME1, MONOCHROME2, RGB, YBR_FULL
  planar: boolean; // colour by plane (PS3.3 C.7.6.3.1.3), as stored uncompressed
  bitsAllocated: number;
  bitsStored: number;
  signed: boolean;
  slope: number;
  intercept: number;
}

export interface Frame {
  instance: string; // SOP Instance UID
  number: number; // 1-based frame number in the instance
  frames: number; // frames in the instance
  instanceNumber: string;
  format: ImageFormat;
  presets: Preset[]; // from the instance's WindowCenter/Width
  // Drawn from the server's rendering (PS3.18 frames/{n}/rendered, PNG) because the pixel pipeline
  // cannot take the stored values as they are (palette colour, 1- and 32-bit pixels, other colour
  // models): the server applies the palette or the window, the viewer shows 8-bit RGB.
  rendered: string | null; // why, or null when the viewer draws the stored values itself
}

export interface Series {
  description: string;
  modality: string;
  frames: Frame[];
}

function values(ds: DicomJson, tag: string): unknown[] {
  return ds[tag]?.Value ?? [];
}

function num(ds: DicomJson, tag: string, fallback: number): number {
  const v = Number(values(ds, tag)[0]);
  return Number.isFinite(v) ? v : fallback;
}

function text(ds: DicomJson, tag: string): string {
  const v = values(ds, tag)[0];
  return v === undefined || v === null ? "" : String(v);
}

/** What the viewer cannot draw, in words; null when it can. */
export function unsupported(f: ImageFormat): string | null {
  if (f.rows < 1 || f.columns < 1) return "the image has no rows or columns";
  if (f.samples === 1) {
    if (!f.photometric.startsWith("MONOCHROME")) return `the photometric interpretation ${f.photometric} (a palette) is not supported`;
    if (f.bitsAllocated !== 8 && f.bitsAllocated !== 16) return `${f.bitsAllocated}-bit pixels are not supported`;
    return null;
  }
  if (f.samples !== 3 || f.bitsAllocated !== 8) return `colour with ${f.samples} samples of ${f.bitsAllocated} bits is not supported`;
  if (!["RGB", "YBR_FULL"].includes(f.photometric)) return `the photometric interpretation ${f.photometric} is not supported`;
  return null;
}

/** The item of a functional group macro for frame ``index`` (0-based): per-frame first, else shared. */
function functional(ds: DicomJson, index: number, macro: string): DicomJson | undefined {
  const item = (tag: string, i: number) => (values(ds, tag)[i] as DicomJson | undefined)?.[macro]?.Value?.[0] as DicomJson | undefined;
  return item(T.PerFrameFunctionalGroups, index) ?? item(T.SharedFunctionalGroups, 0);
}

function formatOf(ds: DicomJson): ImageFormat {
  const samples = num(ds, T.SamplesPerPixel, 1);
  // Compressed objects (their Pixel Data is OB in the metadata) are decoded by the server to RGB,
  // colour by pixel (pydicom converts YBR_FULL_422, YBR_ICT and YBR_RCT); native data comes as stored.
  const compressed = ds[T.PixelData]?.vr === "OB";
  let photometric = text(ds, T.PhotometricInterpretation).trim().toUpperCase() || "MONOCHROME2";
  if (samples === 3 && compressed) photometric = "RGB";
  const bitsAllocated = num(ds, T.BitsAllocated, 16);
  return {
    rows: num(ds, T.Rows, 0), columns: num(ds, T.Columns, 0), samples, photometric,
    planar: samples === 3 && !compressed && num(ds, T.PlanarConfiguration, 0) === 1,
    bitsAllocated, bitsStored: Math.min(num(ds, T.BitsStored, bitsAllocated), bitsAllocated),
    signed: num(ds, T.PixelRepresentation, 0) === 1,
    slope: num(ds, T.RescaleSlope, 1) || 1, intercept: num(ds, T.RescaleIntercept, 0),
  };
}

function presetsOf(ds: DicomJson): Preset[] {
  const centers = values(ds, T.WindowCenter).map(Number);
  const widths = values(ds, T.WindowWidth).map(Number);
  const names = values(ds, T.WindowExplanation).map(String);
  const out: Preset[] = [];
  centers.forEach((center, i) => {
    const width = widths[i];
    if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) {
      out.push({ label: names[i]?.trim() || (centers.length > 1 ? `From the data ${i + 1}` : "From the data"), center, width });
    }
  });
  return out;
}

/** Sort key: the position along the slice normal when every instance has one, else Instance Number. */
function order(instances: DicomJson[]): DicomJson[] {
  const positions = instances.map((ds) => values(ds, T.ImagePositionPatient).map(Number));
  const orientation = values(instances[0] ?? {}, T.ImageOrientationPatient).map(Number);
  const byNumber = (a: DicomJson, b: DicomJson) => num(a, T.InstanceNumber, 0) - num(b, T.InstanceNumber, 0);
  if (orientation.length === 6 && positions.every((p) => p.length === 3 && p.every(Number.isFinite))) {
    const [a, b, c, d, e, f] = orientation; // PS3.3 C.7.6.2.1.1: row and column direction cosines
    const normal = [b * f - c * e, c * d - a * f, a * e - b * d];
    const along = new Map(instances.map((ds, i) => [ds, positions[i].reduce((s, v, k) => s + v * normal[k], 0)]));
    return [...instances].sort((x, y) => along.get(x)! - along.get(y)! || byNumber(x, y));
  }
  return [...instances].sort(byNumber);
}

/** The series' frames in display order, from /dicom-web/studies/{s}/series/{se}/metadata. */
export async function loadSeries(study: string, series: string, signal: AbortSignal): Promise<Series> {
  const url = `/dicom-web/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/metadata`;
  const response = await authorizedFetch(url, { signal, headers: { Accept: "application/dicom+json" } });
  if (response.status === 401) throw new ApiError(401, "Sign-in is required: sign in again.");
  if (!response.ok) throw new ApiError(response.status, `The series' metadata: HTTP ${response.status}`);
  const instances = ((await response.json()) as DicomJson[]).filter((ds) => T.Rows in ds && T.PixelData in ds);
  const frames: Frame[] = [];
  for (const ds of order(instances)) {
    const count = Math.max(1, Math.floor(num(ds, T.NumberOfFrames, 1)));
    const format = formatOf(ds);
    const presets = presetsOf(ds);
    const enhanced = T.SharedFunctionalGroups in ds || T.PerFrameFunctionalGroups in ds;
    for (let n = 1; n <= count; n++) {
      let frameFormat = format;
      let framePresets = presets;
      if (enhanced) {
        const rescale = functional(ds, n - 1, T.PixelValueTransformation);
        const voi = functional(ds, n - 1, T.FrameVOILUT);
        if (rescale) frameFormat = { ...format, slope: num(rescale, T.RescaleSlope, 1) || 1, intercept: num(rescale, T.RescaleIntercept, 0) };
        if (voi) framePresets = presetsOf(voi);
      }
      const why = frameFormat.rows > 0 && frameFormat.columns > 0 ? unsupported(frameFormat) : null;
      if (why) {
        frameFormat = { ...frameFormat, samples: 3, photometric: "RGB", planar: false, bitsAllocated: 8, bitsStored: 8,
                        signed: false, slope: 1, intercept: 0 };
        framePresets = [];
      }
      frames.push({ instance: text(ds, T.SOPInstanceUID), number: n, frames: count,
                    instanceNumber: text(ds, T.InstanceNumber), format: frameFormat, presets: framePresets,
                    rendered: why });
    }
  }
  const firstDs = instances[0] ?? {};
  return { description: text(firstDs, T.SeriesDescription), modality: text(firstDs, T.Modality), frames };
}

const CRLF_CRLF = [13, 10, 13, 10];

function indexOf(haystack: Uint8Array, needle: Uint8Array | number[], from = 0): number {
  const first = needle[0];
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= haystack.length - needle.length;
    i = haystack.indexOf(first, i + 1)) {
    for (let k = 1; k < needle.length; k++) if (haystack[i + k] !== needle[k]) continue outer;
    return i;
  }
  return -1;
}

/** The first part's body of a multipart/related response (RFC 2046 5.1; PS3.18 8.7.3.5), or the body. */
export function firstPart(body: ArrayBuffer, contentType: string): Uint8Array {
  const bytes = new Uint8Array(body);
  const match = /boundary="?([^";,]+)"?/i.exec(contentType);
  if (!/^multipart\//i.test(contentType.trim()) || !match) return bytes;
  const delimiter = new TextEncoder().encode(`--${match[1]}`);
  const start = indexOf(bytes, delimiter);
  if (start < 0) throw new Error("the frame's multipart answer has no boundary");
  const headersEnd = indexOf(bytes, CRLF_CRLF, start + delimiter.length);
  if (headersEnd < 0) throw new Error("the frame's part has no end of headers");
  const headers = new TextDecoder().decode(bytes.subarray(start + delimiter.length, headersEnd));
  const from = headersEnd + 4;
  const length = /^content-length:\s*([0-9]+)\s*$/im.exec(headers);
  if (length) return bytes.subarray(from, from + Number(length[1]));
  const close = new Uint8Array(delimiter.length + 2);
  close.set([13, 10]);
  close.set(delimiter, 2);
  const end = indexOf(bytes, close, from);
  if (end < 0) throw new Error("the frame's part does not end");
  return bytes.subarray(from, end);
}

/** The server's rendering of a frame (PNG) as RGBRGB.. bytes of the frame's size. */
async function fetchRendered(url: string, frame: Frame, signal: AbortSignal): Promise<Uint8Array> {
  const response = await authorizedFetch(`${url}/rendered`, { signal, headers: { Accept: "image/png" } });
  if (!response.ok) throw new ApiError(response.status, `frame ${frame.number} of ${frame.instance} (rendered): HTTP ${response.status}`);
  const bitmap = await createImageBitmap(await response.blob());
  const { columns, rows } = frame.format;
  const canvas = new OffscreenCanvas(columns, rows);
  const context = canvas.getContext("2d");
  if (!context) throw new Error("no 2D canvas for the rendered frame");
  context.drawImage(bitmap, 0, 0, columns, rows);
  bitmap.close();
  const rgba = context.getImageData(0, 0, columns, rows).data;
  const rgb = new Uint8Array(columns * rows * 3);
  for (let i = 0, k = 0; i < rgba.length; i += 4, k += 3) {
    rgb[k] = rgba[i];
    rgb[k + 1] = rgba[i + 1];
    rgb[k + 2] = rgba[i + 2];
  }
  return rgb;
}

/** One frame's stored values, uncompressed little endian (or, for a ``rendered`` frame, the server's RGB). */
export async function fetchFrame(study: string, series: string, frame: Frame, signal: AbortSignal): Promise<Uint8Array> {
  const url = `/dicom-web/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`
    + `/instances/${encodeURIComponent(frame.instance)}/frames/${frame.number}`;
  if (frame.rendered) return fetchRendered(url, frame, signal);
  const response = await authorizedFetch(url, { signal, headers: { Accept: FRAME_ACCEPT } });
  if (!response.ok) throw new ApiError(response.status, `frame ${frame.number} of ${frame.instance}: HTTP ${response.status}`);
  return firstPart(await response.arrayBuffer(), response.headers.get("Content-Type") ?? "");
}

/** Bytes a frame takes as a texture (what viewer-gl.ts uploads). */
export function frameBytes(f: ImageFormat): number {
  return f.rows * f.columns * f.samples * Math.max(1, f.bitsAllocated / 8);
}

/** The GPU memory the viewer's textures may take: 512 MiB, or what the user set (localStorage, MiB). */
const GPU_BUDGET_KEY = "archive.viewer.gpuMegabytes";
export function gpuBudget(): number {
  let stored: string | null = null;
  try {
    stored = localStorage.getItem(GPU_BUDGET_KEY);
  } catch {
    // storage blocked: the default
  }
  const megabytes = Number(stored);
  return (stored !== null && Number.isFinite(megabytes) && megabytes > 0 ? megabytes : 512) * 2 ** 20;
}

/**
 * Loads the frames of a series, ``concurrency`` requests in flight (one until the first frame is
 * in), nearest to ``center`` first (``focus`` moves it), at most ``resident`` of them at a time: the
 * ``resident`` frames nearest to the center are kept, a frame that falls out of them is dropped by
 * the caller (``inWindow`` says which; ``forget`` makes it loadable again). ``onLoad`` gets each
 * frame's bytes; a frame that fails is reported through ``onError`` and not asked again.
 */
export class Prefetcher {
  private state: Uint8Array; // 0 waiting, 1 in flight, 2 done, 3 failed
  private inFlight = 0;
  private center = 0;
  private readonly abort = new AbortController();
  loaded = 0;
  failed = 0;

  constructor(
    private readonly study: string,
    private readonly series: string,
    private readonly frames: Frame[],
    private readonly onLoad: (index: number, data: Uint8Array) => void,
    private readonly onError: (index: number, error: unknown) => void,
    private readonly concurrency = 6, // Chromium's HTTP/1.1 connections per origin
    readonly resident = frames.length,
  ) {
    this.state = new Uint8Array(frames.length);
    this.resident = Math.max(1, Math.min(frames.length, resident));
  }

  focus(center: number): void {
    this.center = center;
    this.pump();
  }

  /** The first index and the end of the ``resident`` frames around the center. */
  window(): [number, number] {
    const n = this.frames.length;
    const first = Math.max(0, Math.min(n - this.resident, this.center - Math.floor(this.resident / 2)));
    return [first, first + this.resident];
  }

  inWindow(index: number): boolean {
    const [first, end] = this.window();
    return index >= first && index < end;
  }

  /** A loaded frame the caller dropped: loaded again when it comes back into the window. */
  forget(index: number): void {
    if (this.state[index] !== 2) return;
    this.state[index] = 0;
    this.loaded--;
  }

  stop(): void {
    this.abort.abort();
  }

  done(): boolean {
    return this.loaded + this.failed === this.frames.length;
  }

  private next(): number {
    const [first, end] = this.window();
    for (let d = 0; d < end - first; d++) {
      const after = this.center + d;
      if (after < end && this.state[after] === 0) return after;
      const before = this.center - d - 1;
      if (before >= first && this.state[before] === 0) return before;
      if (after >= end && before < first) break;
    }
    return -1;
  }

  private pump(): void {
    // The first frame goes alone: the server's work is not shared with five others, so it shows sooner.
    const limit = this.loaded + this.failed === 0 ? 1 : this.concurrency;
    while (this.inFlight < limit && !this.abort.signal.aborted) {
      const index = this.next();
      if (index < 0) return;
      this.state[index] = 1;
      this.inFlight++;
      fetchFrame(this.study, this.series, this.frames[index], this.abort.signal).then(
        (data) => {
          this.state[index] = 2;
          this.loaded++;
          this.onLoad(index, data);
        },
        (error: unknown) => {
          this.state[index] = 3;
          this.failed++;
          if (!this.abort.signal.aborted) this.onError(index, error);
        },
      ).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }
}

/** The common CT windows (center/width in HU), as radiology departments name them. */
export const CT_PRESETS: Preset[] = [
  { label: "Brain", center: 40, width: 80 },
  { label: "Subdural", center: 75, width: 215 },
  { label: "Soft tissue", center: 40, width: 400 },
  { label: "Abdomen", center: 60, width: 400 },
  { label: "Liver", center: 90, width: 150 },
  { label: "Mediastinum", center: 50, width: 350 },
  { label: "Lung", center: -600, width: 1500 },
  { label: "Bone", center: 400, width: 1800 },
];
