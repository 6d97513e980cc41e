// The upload page (/ui/upload): files or whole folders, dropped or chosen, sent through STOW-RS
// (PS3.18 10.5) a few files per request with at most IN_FLIGHT requests at a time. Each file's
// result comes from the archive's answer (PS3.18 10.5.3, Store Instances Response Module):
// ReferencedSOPSequence -> stored (with WarningReason B000: a duplicate, the archived copy kept),
// FailedSOPSequence -> rejected with its FailureReason (0111: a duplicate with other content).
// A second file with a SOP Instance UID already stored by this upload is shown as a duplicate.
// Files without the DICM marker of a Part 10 file are rejected here and never sent.
// The page stays responsive with thousands of files: file state lives outside Preact and the
// view is redrawn at most every REDRAW_MS, in an animation frame; the list draws the first ROWS files.
import { useEffect, useRef, useState } from "preact/hooks";
import { authorizedFetch } from "./auth";
import "./upload.css";

const IN_FLIGHT = 4; // STOW-RS requests at a time
const BATCH_FILES = 8; // files per request ...
const BATCH_BYTES = 8 * 1024 * 1024; // ... and bytes per request (a large file goes alone)
const ROWS = 200; // rows of the result list drawn
const REDRAW_MS = 100; // the view is redrawn at most this often while files are in flight
const STUDIES = "/dicom-web/studies";

type State = "queued" | "sending" | "stored" | "duplicate" | "rejected";

interface Item {
  name: string; // the path inside the dropped folder, as the user named it
  file: File;
  state: State;
  reason: string;
}

// PS3.18 10.5.3 / PS3.4 B.2.3: the codes the archive answers with, in words
const REASONS: Record<number, string> = {
  0x0110: "processing failure in the archive",
  0x0111: "duplicate: the archive holds other content under this SOP Instance UID",
  0x0122: "SOP class not supported",
  0xa700: "archive out of resources, retry later",
  0xa701: "archive too slow, retry later",
  0xa900: "does not belong to the study it was sent to",
  0xb000: "duplicate: the archive holds other content under this SOP Instance UID and kept it",
  0xc000: "cannot be parsed",
  0xc001: "invalid UID",
  0xc122: "transfer syntax not supported",
};

function reasonText(code: number): string {
  return `${REASONS[code] ?? "refused by the archive"} (0x${code.toString(16).toUpperCase().padStart(4, "0")})`;
}

type Dicom = Record<string, { Value?: unknown[] }>;

function value(item: Dicom, tag: string): unknown {
  return item[tag]?.Value?.[0];
}

/** Whether a file is DICOM Part 10: "DICM" after the 128-byte preamble (PS3.10 7.1). */
async function isPart10(file: File): Promise<boolean> {
  if (file.size < 132) return false;
  const marker = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return marker[0] === 0x44 && marker[1] === 0x49 && marker[2] === 0x43 && marker[3] === 0x4d;
}

/** The files under a dropped entry, folders walked (readEntries answers in pages until empty). */
async function filesOf(entry: FileSystemEntry, out: Item[]): Promise<void> {
  if (entry.isFile) {
    const file = await new Promise<File>((resolve, reject) => (entry as FileSystemFileEntry).file(resolve, reject));
    out.push({ name: entry.fullPath.replace(/^\//, ""), file, state: "queued", reason: "" });
    return;
  }
  const reader = (entry as FileSystemDirectoryEntry).createReader();
  for (;;) {
    const page = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject));
    if (!page.length) return;
    for (const child of page) await filesOf(child, out);
  }
}

/** The multipart/related body of a STOW-RS request (PS3.18 10.5.1.2): one part per file. */
function body(files: File[], boundary: string): Blob {
  const parts: BlobPart[] = [];
  for (const file of files) parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, "\r\n");
  parts.push(`--${boundary}--\r\n`);
  return new Blob(parts);
}

class Upload {
  items: Item[] = [];
  private next = 0;
  private running = 0;
  private storedUids = new Set<string>();

  constructor(private readonly changed: () => void) {}

  add(items: Item[]): void {
    this.items.push(...items);
    this.changed();
    this.pump();
  }

  private pump(): void {
    while (this.running < IN_FLIGHT && this.next < this.items.length) {
      this.running++;
      this.sendBatch().finally(() => {
        this.running--;
        this.changed();
        this.pump();
      });
    }
  }

  /** Take the next files that are Part 10 (the others are rejected here) and send them. */
  private async sendBatch(): Promise<void> {
    const batch: Item[] = [];
    let bytes = 0;
    while (this.next < this.items.length && batch.length < BATCH_FILES) {
      const item = this.items[this.next];
      if (batch.length && bytes + item.file.size > BATCH_BYTES) break;
      this.next++;
      item.state = "sending";
      if (!(await isPart10(item.file))) {
        this.settle(item, "rejected", "not a DICOM file (no DICM marker after the 128-byte preamble)");
        continue;
      }
      batch.push(item);
      bytes += item.file.size;
    }
    this.changed();
    if (batch.length) await this.send(batch);
  }

  private settle(item: Item, state: State, reason = ""): void {
    item.state = state;
    item.reason = reason;
  }

  private async send(batch: Item[]): Promise<void> {
    const boundary = `upload-${crypto.randomUUID()}`;
    let answer: Dicom | null = null;
    let failure = "";
    try {
      const response = await authorizedFetch(STUDIES, {
        method: "POST", credentials: "same-origin", body: body(batch.map((i) => i.file), boundary),
        headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
          Accept: "application/dicom+json" },
      });
      const text = await response.text();
      try {
        const parsed = JSON.parse(text) as Dicom | { error?: string };
        if ("error" in parsed && typeof parsed.error === "string") failure = parsed.error;
        else answer = parsed as Dicom;
      } catch {
        failure = `HTTP ${response.status}`;
      }
      if (response.status === 401 || response.status === 403) failure = `HTTP ${response.status}: not allowed to upload`;
    } catch (error) {
      failure = `not sent: ${String(error)}`;
    }
    if (!answer || failure) {
      for (const item of batch) this.settle(item, "rejected", failure || "no answer from the archive");
      return;
    }
    // One item per part, each sequence in the order of the parts (the archive answers so); the
    // items name SOP Instance UIDs, which this page does not parse out of the files. So when a
    // request has both outcomes, each of its files is sent again alone (an identical copy is
    // stored again as Success) to learn which file had which.
    const stored = (answer["00081199"]?.Value ?? []) as Dicom[];
    const failed = (answer["00081198"]?.Value ?? []) as Dicom[];
    if (stored.length + failed.length !== batch.length) {
      for (const item of batch) this.settle(item, "rejected", "the archive's answer does not list every file");
    } else if (stored.length && failed.length) {
      await Promise.all(batch.map((item) => this.send([item])));
    } else {
      batch.forEach((item, i) => this.record(item, stored.length ? stored[i] : failed[i], stored.length > 0));
    }
  }

  private record(item: Item, d: Dicom, ok: boolean): void {
    if (!ok) {
      const code = Number(value(d, "00081197") ?? 0x0110);
      this.settle(item, code === 0x0111 ? "duplicate" : "rejected", reasonText(code));
      return;
    }
    const uid = String(value(d, "00081155") ?? "");
    const warning = value(d, "00081196");
    if (warning !== undefined) this.settle(item, "duplicate", reasonText(Number(warning)));
    else if (uid && this.storedUids.has(uid)) this.settle(item, "duplicate", "same SOP Instance UID as another file of this upload");
    else this.settle(item, "stored");
    if (uid) this.storedUids.add(uid);
  }
}

const LABEL: Record<State, string> = {
  queued: "Queued", sending: "Sending", stored: "Stored", duplicate: "Duplicate", rejected: "Rejected",
};

export function UploadPage() {
  const [, redraw] = useState(0);
  const frame = useRef(0);
  const upload = useRef<Upload | null>(null);
  const [over, setOver] = useState(false);
  if (!upload.current) {
    upload.current = new Upload(() => {
      if (!frame.current) {
        frame.current = window.setTimeout(() => requestAnimationFrame(() => { frame.current = 0; redraw((n) => n + 1); }),
          REDRAW_MS);
      }
    });
  }
  const up = upload.current;
  useEffect(() => {
    document.title = "Upload — DICOM archive";
    document.getElementById("upload-title")?.focus();
    return () => clearTimeout(frame.current);
  }, []);

  const fromList = (files: FileList | null) => {
    if (!files) return;
    up.add(Array.from(files, (file) => ({ name: file.webkitRelativePath || file.name, file, state: "queued" as State,
      reason: "" })));
  };
  const onDrop = async (event: DragEvent) => {
    event.preventDefault();
    setOver(false);
    const items = Array.from(event.dataTransfer?.items ?? []).filter((i) => i.kind === "file");
    const entries = items.map((i) => i.webkitGetAsEntry()).filter((e): e is FileSystemEntry => e !== null);
    if (!entries.length) return fromList(event.dataTransfer?.files ?? null);
    const found: Item[] = [];
    for (const entry of entries) await filesOf(entry, found);
    up.add(found);
  };

  const counts: Record<State, number> = { queued: 0, sending: 0, stored: 0, duplicate: 0, rejected: 0 };
  for (const item of up.items) counts[item.state]++;
  const done = counts.stored + counts.duplicate + counts.rejected;
  const total = up.items.length;

  return (
    <main class="upload-page">
      <h2 id="upload-title" tabIndex={-1}>Upload</h2>
      <div class={`dropzone${over ? " over" : ""}`} onDragOver={(e) => { e.preventDefault(); setOver(true); }}
        onDragLeave={() => setOver(false)} onDrop={(e) => void onDrop(e)}>
        <p>Drop DICOM files or folders here, or choose them:</p>
        <div class="upload-inputs">
          <label>Files <input id="upload-files" type="file" multiple
            onChange={(e) => { fromList(e.currentTarget.files); e.currentTarget.value = ""; }} /></label>
          <label>A folder <input id="upload-folder" type="file" {...{ webkitdirectory: true }}
            onChange={(e) => { fromList(e.currentTarget.files); e.currentTarget.value = ""; }} /></label>
        </div>
      </div>
      {total > 0 && (
        <section aria-labelledby="upload-results">
          <h3 id="upload-results">Results</h3>
          <progress max={total} value={done} aria-label="Files done" />
          <p class="status" role="status" id="upload-summary">
            {done} of {total} files done: {counts.stored} stored, {counts.duplicate} duplicate, {counts.rejected} rejected
          </p>
          <table class="upload-table">
            <thead><tr><th scope="col">File</th><th scope="col">Result</th><th scope="col">Reason</th></tr></thead>
            <tbody>
              {up.items.slice(0, ROWS).map((item, i) => (
                <tr key={i} class={`upload-${item.state}`} data-state={item.state}>
                  <td>{item.name}</td><td>{LABEL[item.state]}</td><td>{item.reason}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {total > ROWS && <p class="status">and {total - ROWS} more files (counted above)</p>}
        </section>
      )}
    </main>
  );
}
