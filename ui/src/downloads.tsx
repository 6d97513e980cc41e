// Download links (WADO-RS, PS3.18 8.7.3.5 and 8.3.3.1): plain links with ?accept=, so the browser
// downloads them itself: a study or a series as a zip, an instance as a .dcm (as stored).
import "./upload.css";

const uid = encodeURIComponent;
const ZIP = `accept=${uid("application/zip")}`;
const DCM = `accept=${uid("application/dicom; transfer-syntax=*")}`;

export function studyZipUrl(study: string): string {
  return `/dicom-web/studies/${uid(study)}?${ZIP}`;
}

export function seriesZipUrl(study: string, series: string): string {
  return `/dicom-web/studies/${uid(study)}/series/${uid(series)}?${ZIP}`;
}

export function instanceUrl(study: string, series: string, instance: string): string {
  return `/dicom-web/studies/${uid(study)}/series/${uid(series)}/instances/${uid(instance)}?${DCM}`;
}

export function Download({ href, label }: { href: string; label: string }) {
  return <a class="download" href={href} download>{label}</a>;
}
