// Download links (WADO-RS, PS3.18 8.7.3.5 and 8.3.3.1): plain links with ?accept=, so the browser
// downloads them itself: a study or a series as a zip (a study also with a DICOMDIR), an instance as
// a .dcm (as stored). With
// sign-in on, a link cannot carry the token (never in a URL): the click fetches the file with it
// and saves the blob under the name the server's Content-Disposition gives.
import { authorizedFetch, signedIn } from "./auth";
import "./upload.css";

const uid = encodeURIComponent;
const ZIP = `accept=${uid("application/zip")}`;
const DCM = `accept=${uid("application/dicom; transfer-syntax=*")}`;

export function studyZipUrl(study: string): string {
  return `/dicom-web/studies/${uid(study)}?${ZIP}`;
}

// The same study laid out as media: PS3.10 file names and a DICOMDIR, for a CD, DVD or USB stick.
export function studyMediaUrl(study: string): string {
  return `/dicom-web/studies/${uid(study)}?${ZIP}&dicomdir=true`;
}

export function seriesZipUrl(study: string, series: string): string {
  return `/dicom-web/studies/${uid(study)}/series/${uid(series)}?${ZIP}`;
}

export function instanceUrl(study: string, series: string, instance: string): string {
  return `/dicom-web/studies/${uid(study)}/series/${uid(series)}/instances/${uid(instance)}?${DCM}`;
}

function filename(response: Response): string {
  const match = /filename="?([A-Za-z0-9._-]+)"?/.exec(response.headers.get("Content-Disposition") ?? "");
  return match ? match[1] : "download";
}

async function save(href: string): Promise<void> {
  const response = await authorizedFetch(href);
  if (!response.ok) {
    console.error(`download of ${href} failed: ${response.status}`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename(response);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function Download({ href, label }: { href: string; label: string }) {
  const onClick = (event: MouseEvent) => {
    if (!signedIn()) return; // sign-in off: the browser downloads the link itself
    event.preventDefault();
    void save(href);
  };
  return <a class="download" href={href} download onClick={onClick}>{label}</a>;
}
