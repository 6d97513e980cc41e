// An encapsulated PDF (PS3.3 A.45.1) drawn in the page by pdf.js (Mozilla, Apache-2.0): one page
// at a time into a canvas, with pdf.js's text layer over it (selectable, findable text), page
// navigation, zoom, and a download of the original PDF. pdf.js parses in its worker, a hashed
// file of this origin (the CSP's script-src 'self' covers workers); pdf.js 6 has no eval
// (the CSP has no 'unsafe-eval'), and no font or wasm is fetched from
// anywhere (fonts a PDF does not embed are drawn with the browser's own).
import { useEffect, useRef, useState } from "preact/hooks";
import { GlobalWorkerOptions, TextLayer, getDocument, type PDFDocumentProxy } from "pdfjs-dist";
import workerUrl from "pdfjs-dist/build/pdf.worker.min.mjs?url";
import "./objects.css";

GlobalWorkerOptions.workerSrc = workerUrl;

const ZOOMS = [0.5, 0.75, 1, 1.25, 1.5, 2, 3];

export default function PdfView({ data, title }: { data: Uint8Array; title: string }) {
  const [doc, setDoc] = useState<PDFDocumentProxy | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [pageNumber, setPageNumber] = useState(1);
  const [zoom, setZoom] = useState(2); // index into ZOOMS: 100 %
  const [drawn, setDrawn] = useState("");
  const [download, setDownload] = useState<string | null>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const text = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const url = URL.createObjectURL(new Blob([data.slice()], { type: "application/pdf" }));
    setDownload(url);
    // pdf.js takes ownership of the buffer it is given: hand it a copy
    const task = getDocument({ data: data.slice(), enableXfa: false, useWorkerFetch: false });
    task.promise.then((d) => { setDoc(d); setPageNumber(1); }, (e: unknown) => setError(`This PDF cannot be shown: ${String(e)}`));
    return () => {
      void task.destroy();
      URL.revokeObjectURL(url);
    };
  }, [data]);

  useEffect(() => {
    if (!doc || !canvas.current || !text.current) return;
    let cancelled = false;
    let textLayer: TextLayer | null = null;
    const target = canvas.current;
    const layer = text.current;
    setDrawn("");
    void (async () => {
      const page = await doc.getPage(pageNumber);
      if (cancelled) return;
      const viewport = page.getViewport({ scale: ZOOMS[zoom] });
      const ratio = window.devicePixelRatio || 1;
      target.width = Math.floor(viewport.width * ratio);
      target.height = Math.floor(viewport.height * ratio);
      target.style.width = `${Math.floor(viewport.width)}px`;
      target.style.height = `${Math.floor(viewport.height)}px`;
      await page.render({
        canvas: target, viewport, transform: ratio === 1 ? undefined : [ratio, 0, 0, ratio, 0, 0],
      }).promise;
      if (cancelled) return;
      layer.replaceChildren();
      layer.style.setProperty("--total-scale-factor", String(viewport.scale));
      textLayer = new TextLayer({ textContentSource: page.streamTextContent(), container: layer, viewport });
      await textLayer.render();
      if (!cancelled) setDrawn(`Page ${pageNumber} of ${doc.numPages}`);
    })().catch((e: unknown) => cancelled || setError(`This page cannot be drawn: ${String(e)}`));
    return () => {
      cancelled = true;
      textLayer?.cancel();
    };
  }, [doc, pageNumber, zoom]);

  const pages = doc?.numPages ?? 0;
  return (
    <section class="pdf" aria-labelledby="pdf-title">
      <h3 id="pdf-title">{title}</h3>
      <div class="pdf-controls" role="toolbar" aria-label="PDF pages and zoom">
        <button type="button" disabled={pageNumber <= 1} onClick={() => setPageNumber(pageNumber - 1)}>Previous page</button>
        <button type="button" disabled={pageNumber >= pages} onClick={() => setPageNumber(pageNumber + 1)}>Next page</button>
        <button type="button" disabled={zoom <= 0} aria-label="Zoom out" onClick={() => setZoom(zoom - 1)}>−</button>
        <span class="zoom">{Math.round(ZOOMS[zoom] * 100)} %</span>
        <button type="button" disabled={zoom >= ZOOMS.length - 1} aria-label="Zoom in" onClick={() => setZoom(zoom + 1)}>+</button>
        {download && <a class="download" href={download} download={`${title.replace(/[^A-Za-z0-9._ -]/g, "_") || "document"}.pdf`}>
          Download the PDF</a>}
      </div>
      <p class="status" role="status">{error ? "" : drawn || "Drawing the PDF…"}</p>
      {error && <p class="error" role="alert">{error}</p>}
      <div class="pdf-page">
        <canvas ref={canvas} aria-label={`${title}, page ${pageNumber}`} role="img" />
        <div ref={text} class="textLayer" />
      </div>
    </section>
  );
}
