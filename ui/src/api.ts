// The archive's HTTP API as the page uses it: same origin, the API's own authentication (the
// bearer token of the page's sign-in, when on: every call goes through authorizedFetch).
import { authorizedFetch, type OidcConfig } from "./auth";

export interface UiConfig {
  oidc: OidcConfig | null;
  viewer_url: string | null;
}

export interface Bucket {
  value: string;
  count: number;
}

export interface Hit {
  StudyInstanceUID: string;
  score: number | null;
  instances: number;
  modalities: string[];
  attributes: Record<string, string | number | undefined>;
}

export interface SearchResult {
  total: number;
  offset: number;
  limit: number;
  sort: string;
  hits: Hit[];
  facets: Record<string, Bucket[]>;
  date_interval: string;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly parameter: string | null = null) {
    super(message);
  }
}

/** The error of a failed response: the API's JSON error (and the parameter it names), else the status. */
async function failure(response: Response): Promise<ApiError> {
  let message = response.statusText || `HTTP ${response.status}`;
  let parameter: string | null = null;
  try {
    const body = (await response.json()) as { error?: string; parameter?: string | null };
    if (body.error) message = body.error;
    parameter = body.parameter ?? null;
  } catch {
    // not JSON: keep the status text
  }
  if (response.status === 401) message = "Sign-in is required: sign in again.";
  return new ApiError(response.status, message, parameter);
}

async function json<T>(url: string, signal?: AbortSignal): Promise<T> {
  const response = await authorizedFetch(url, { signal, headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!response.ok) throw await failure(response);
  return (await response.json()) as T;
}

export async function loadConfig(): Promise<UiConfig> {
  const response = await fetch("/ui/config.json", { headers: { Accept: "application/json" } }); // needs no token
  if (!response.ok) throw await failure(response);
  return (await response.json()) as UiConfig;
}

export function search(params: URLSearchParams, signal: AbortSignal): Promise<SearchResult> {
  return json<SearchResult>(`/api/search?${params.toString()}`, signal);
}

/** A DICOM JSON dataset (PS3.18 F.2): tag (8 hex digits) -> element. */
export type DicomJson = Record<string, DicomElement>;
export interface DicomElement {
  vr: string;
  Value?: unknown[];
  InlineBinary?: string;
  BulkDataURI?: string;
}

async function dicomJson(url: string, signal?: AbortSignal): Promise<DicomJson[]> {
  const response = await authorizedFetch(url, { signal, headers: { Accept: "application/dicom+json" } });
  if (response.status === 204) return [];
  if (!response.ok) throw await failure(response);
  return (await response.json()) as DicomJson[];
}

const uid = encodeURIComponent;

export function studyOf(study: string, signal?: AbortSignal): Promise<DicomJson[]> {
  return dicomJson(`/dicom-web/studies?StudyInstanceUID=${uid(study)}&includefield=all`, signal);
}

export function seriesOf(study: string, signal?: AbortSignal): Promise<DicomJson[]> {
  return dicomJson(`/dicom-web/studies/${uid(study)}/series?includefield=BodyPartExamined`, signal);
}

export function instancesOf(study: string, series: string, signal?: AbortSignal): Promise<DicomJson[]> {
  return dicomJson(`/dicom-web/studies/${uid(study)}/series/${uid(series)}/instances`, signal);
}

export function metadataOf(study: string, series: string, instance: string, signal?: AbortSignal): Promise<DicomJson[]> {
  return dicomJson(`/dicom-web/studies/${uid(study)}/series/${uid(series)}/instances/${uid(instance)}/metadata`, signal);
}

export function thumbnailUrl(study: string, series: string): string {
  return `/dicom-web/studies/${uid(study)}/series/${uid(series)}/thumbnail`;
}
