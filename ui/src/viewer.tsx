// The stack viewer at /ui/study/<study>/series/<series> (UIDs only in the URL). The series'
// metadata gives the frames in order; every frame is prefetched (viewer-data.ts) and uploaded once
// to the GPU (viewer-gl.ts); window/level, zoom, pan and scrolling only re-draw. A series larger
// than the GPU budget (512 MiB, or localStorage archive.viewer.gpuMegabytes) keeps the frames
// around the one shown, dropping and loading again as the user scrolls. Usable by mouse
// (drag: window; shift or middle-button drag, or the pan tool: pan; ctrl+drag or ctrl+wheel:
// zoom; wheel: scroll) and by keyboard on the focused image (arrows, Page Up/Down, Home/End,
// + and -, R to reset, Space for cine, 1-9 for the presets).
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";
import { NoWebGL2, Renderer, type FrameTexture, type View } from "./viewer-gl";
import { CT_PRESETS, frameBytes, gpuBudget, loadSeries, Prefetcher, unsupported, type Frame, type Preset,
  type Series } from "./viewer-data";
import "./viewer.css";

const uid = encodeURIComponent;
const MIN_ZOOM = 0.1;
const MAX_ZOOM = 40;
const FULL_RANGE = "Full range";
const SETTLE_MS = 150;

export function viewerPath(study: string, series: string): string {
  return `/ui/study/${uid(study)}/series/${uid(series)}`;
}

/** In-page navigation: the App listens to popstate (app.tsx) and routes the new path. */
function goTo(path: string, state: unknown = null): void {
  history.pushState(state, "", path);
  dispatchEvent(new PopStateEvent("popstate", { state }));
}

function plainClick(event: MouseEvent): boolean {
  return event.button === 0 && !event.ctrlKey && !event.metaKey && !event.shiftKey && !event.altKey;
}

/** The "View" link of a series card: a real link, followed in the page on a plain click. */
export function ViewLink({ study, series, label }: { study: string; series: string; label: string }) {
  const href = viewerPath(study, series);
  return (
    <a class="view-link" href={href} aria-label={label}
      onClick={(e) => { if (plainClick(e)) { e.preventDefault(); goTo(href, { viewer: true }); } }}>
      View
    </a>
  );
}

/**
 * The first WebGL context of a page can take a second or more to create (a software renderer's
 * start-up, on the main thread): create one, and drop it, while the series' metadata loads.
 */
function warmUp(): void {
  try {
    const gl = document.createElement("canvas").getContext("webgl2");
    gl?.getExtension("WEBGL_lose_context")?.loseContext();
  } catch {
    // the viewer says so when it needs its own context
  }
}

type Load = { kind: "loading" } | { kind: "done"; series: Series } | { kind: "error"; error: string };

export function ViewerPage({ study, series }: { study: string; series: string }) {
  const [load, setLoad] = useState<Load>({ kind: "loading" });
  useEffect(() => {
    const abort = new AbortController();
    setLoad({ kind: "loading" });
    const loading = loadSeries(study, series, abort.signal);
    warmUp(); // while the metadata is on its way
    loading.then(
      (s) => setLoad({ kind: "done", series: s }),
      (error: unknown) => abort.signal.aborted || setLoad({ kind: "error", error: error instanceof ApiError ? error.message : String(error) }),
    );
    return () => abort.abort();
  }, [study, series]);
  useEffect(() => {
    document.title = "Viewer — DICOM archive";
    document.getElementById("viewer-title")?.focus();
  }, [study, series]);

  const studyPath = `/ui/study/${uid(study)}`;
  const back = (e: MouseEvent) => {
    if (!plainClick(e)) return;
    e.preventDefault();
    if ((history.state as { viewer?: boolean } | null)?.viewer) history.back();
    else goTo(studyPath);
  };
  const s = load.kind === "done" ? load.series : null;
  return (
    <main class="viewer-page">
      <p class="viewer-back"><a href={studyPath} onClick={back}>← Back to the study</a></p>
      <h2 id="viewer-title" tabIndex={-1}>{s ? s.description || `${s.modality || "Image"} series` : "Series"}</h2>
      {load.kind === "loading" && <p class="status" role="status">Loading the series…</p>}
      {load.kind === "error" && <p class="error" role="alert">{load.error}</p>}
      {s && s.frames.length === 0 && <p class="error" role="alert">This series holds no image the viewer can show.</p>}
      {s && s.frames.length > 0 && <Stack study={study} seriesUid={series} series={s} />}
    </main>
  );
}

function presetsFor(series: Series, frame: Frame | undefined): Preset[] {
  const fromData = frame?.presets ?? [];
  return series.modality === "CT" && frame?.format.samples === 1 ? [...fromData, ...CT_PRESETS] : fromData;
}

function Stack({ study, seriesUid, series }: { study: string; seriesUid: string; series: Series }) {
  const frames = series.frames;
  const n = frames.length;
  const canvas = useRef<HTMLCanvasElement>(null);
  const renderer = useRef<Renderer | null>(null);
  const textures = useRef<(FrameTexture | undefined)[]>([]);
  const failures = useRef<(string | undefined)[]>([]);
  const prefetch = useRef<Prefetcher | null>(null);
  const view = useRef<View>({ center: 0, width: 0, zoom: 1, panX: 0, panY: 0 });
  const windowSet = useRef(false);
  const indexRef = useRef(0);
  const scheduled = useRef(0);
  const draws = useRef(0);

  const [index, setIndexState] = useState(0);
  const [loaded, setLoaded] = useState(0);
  const [held, setHeld] = useState(n); // frames the GPU budget holds at once
  const [failed, setFailed] = useState(0);
  const [fatal, setFatal] = useState<string | null>(null);
  const [shown, setShown] = useState<View>(() => ({ ...view.current })); // what the overlay says (a copy)
  const [preset, setPreset] = useState("");
  const [panTool, setPanTool] = useState(false);
  const [playing, setPlaying] = useState(false);
  const [fps, setFps] = useState(10);

  const frame = frames[index];
  const presets = useMemo(() => presetsFor(series, frame), [series, frame]);

  // Each change draws at once with nearest interpolation, then, once nothing changed for SETTLE_MS,
  // bilinear: software WebGL (no GPU) draws nearest about four times as fast.
  const settle = useRef(0);
  const draw = (smooth = false) => {
    if (!smooth) scheduled.current = 0;
    window.clearTimeout(settle.current);
    const r = renderer.current;
    const c = canvas.current;
    if (!r || !c) return;
    const t = textures.current[indexRef.current];
    if (t && !windowSet.current) {
      const first = frames[indexRef.current].presets[0];
      const [center, width] = t.kind === "rgb" ? [127.5, 256] : first ? [first.center, first.width]
        : [(t.min + t.max) / 2, Math.max(1, t.max - t.min)];
      Object.assign(view.current, { center, width });
      windowSet.current = true;
      setPreset(t.kind === "rgb" ? "" : first ? first.label : FULL_RANGE);
    }
    if (t) r.draw(t, view.current, smooth);
    else r.clear();
    draws.current++;
    if (t && !smooth) settle.current = window.setTimeout(() => requestAnimationFrame(() => draw(true)), SETTLE_MS);
    // for tests and the benchmark: which frame is on the canvas, at rest or not, how many draws were made
    c.dataset.shown = t ? String(indexRef.current) : "";
    c.dataset.smooth = t && smooth ? "1" : "0";
    c.dataset.draws = String(draws.current);
    const v = view.current;
    setShown((was) => (was.center === v.center && was.width === v.width && was.zoom === v.zoom ? was : { ...v }));
  };
  const redraw = () => {
    if (!scheduled.current) scheduled.current = requestAnimationFrame(() => draw());
  };

  const setIndex = (next: number) => {
    const i = Math.max(0, Math.min(n - 1, next));
    if (i === indexRef.current) return;
    indexRef.current = i;
    setIndexState(i);
    const p = prefetch.current;
    p?.focus(i);
    if (p && p.resident < n) { // a series larger than the GPU budget: drop what left the window
      for (let k = 0; k < n; k++) {
        const t = textures.current[k];
        if (t && !p.inWindow(k)) {
          renderer.current?.release(t);
          textures.current[k] = undefined;
          p.forget(k);
        }
      }
      setLoaded(p.loaded);
    }
    redraw();
  };

  useEffect(() => {
    const c = canvas.current!;
    textures.current = new Array<FrameTexture | undefined>(n);
    failures.current = new Array<string | undefined>(n);
    const largest = frames.reduce((m, f) => Math.max(m, frameBytes(f.format)), 1);
    const p = new Prefetcher(study, seriesUid, frames, (i, data) => {
      const f = frames[i];
      const why = unsupported(f.format);
      try {
        if (why) throw new Error(why);
        if (!p.inWindow(i)) { // scrolled away while it was on its way
          p.forget(i);
          return;
        }
        textures.current[i] = renderer.current!.upload(f.format, data);
      } catch (error) {
        failures.current[i] = error instanceof Error ? error.message : String(error);
        setFailed((k) => k + 1);
      }
      setLoaded(p.loaded);
      if (i === indexRef.current) redraw();
    }, (i, error) => {
      failures.current[i] = error instanceof Error ? error.message : String(error);
      setFailed((k) => k + 1);
      if (i === indexRef.current) redraw();
    }, 6, Math.floor(gpuBudget() / largest));
    prefetch.current = p;
    setHeld(p.resident);
    p.focus(indexRef.current); // the requests leave before the WebGL context (its creation blocks) is made
    try {
      renderer.current = new Renderer(c);
    } catch (error) {
      p.stop();
      setFatal(error instanceof NoWebGL2 ? error.message : `The viewer cannot start: ${String(error)}`);
      return;
    }
    const observer = new ResizeObserver(() => redraw());
    observer.observe(c);
    const onWheel = (e: WheelEvent) => {
      e.preventDefault();
      if (e.ctrlKey) zoomBy(Math.exp(-e.deltaY / 300));
      else if (e.deltaY !== 0) setIndex(indexRef.current + Math.sign(e.deltaY));
    };
    c.addEventListener("wheel", onWheel, { passive: false }); // the page must not scroll under it
    return () => {
      p.stop();
      observer.disconnect();
      c.removeEventListener("wheel", onWheel);
      cancelAnimationFrame(scheduled.current);
      window.clearTimeout(settle.current);
      for (const t of textures.current) if (t) renderer.current?.release(t);
      textures.current = [];
    };
  }, [study, seriesUid, series]);

  // cine: the next loaded frame every 1/fps seconds, wrapping around; an unloaded frame is waited for
  useEffect(() => {
    if (!playing) return;
    let last = performance.now();
    let handle = requestAnimationFrame(function tick(now) {
      if (now - last >= 1000 / fps) {
        const next = (indexRef.current + 1) % n;
        if (textures.current[next] || failures.current[next]) {
          last = now;
          setIndex(next);
        }
      }
      handle = requestAnimationFrame(tick);
    });
    return () => cancelAnimationFrame(handle);
  }, [playing, fps, n]);

  const zoomBy = (factor: number) => {
    const v = view.current;
    v.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, v.zoom * factor));
    redraw();
  };
  const applyWindow = (center: number, width: number, label: string) => {
    Object.assign(view.current, { center, width: Math.max(1, width) });
    windowSet.current = true;
    setPreset(label);
    redraw();
  };
  const choosePreset = (label: string) => {
    const t = textures.current[indexRef.current];
    if (label === FULL_RANGE) {
      if (t) applyWindow((t.min + t.max) / 2, Math.max(1, t.max - t.min), label);
      return;
    }
    const p = presets.find((x) => x.label === label);
    if (p) applyWindow(p.center, p.width, label);
  };
  const reset = () => {
    Object.assign(view.current, { zoom: 1, panX: 0, panY: 0 });
    windowSet.current = false; // the first preset (or the full range) again
    redraw();
  };

  // dragging: window by default; pan with shift, the middle button or the pan tool; zoom with ctrl
  const drag = useRef<{ x: number; y: number; mode: "window" | "pan" | "zoom" } | null>(null);
  const onPointerDown = (e: PointerEvent) => {
    if (e.button !== 0 && e.button !== 1) return;
    e.preventDefault();
    canvas.current?.focus();
    canvas.current?.setPointerCapture(e.pointerId);
    const mode = e.button === 1 || e.shiftKey || panTool ? "pan" : e.ctrlKey || e.metaKey ? "zoom" : "window";
    drag.current = { x: e.clientX, y: e.clientY, mode };
  };
  const onPointerMove = (e: PointerEvent) => {
    const d = drag.current;
    if (!d) return;
    const dx = e.clientX - d.x;
    const dy = e.clientY - d.y;
    d.x = e.clientX;
    d.y = e.clientY;
    const v = view.current;
    if (d.mode === "pan") {
      v.panX += dx;
      v.panY += dy;
    } else if (d.mode === "zoom") {
      v.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, v.zoom * Math.exp(-dy / 200)));
    } else {
      const t = textures.current[indexRef.current];
      if (!t) return;
      // one screen's drag spans the image's value range: right widens, down raises the level
      const step = Math.max(t.max - t.min, 1) / 512;
      v.width = Math.max(1, v.width + dx * step);
      v.center += dy * step;
      windowSet.current = true;
      if (preset) setPreset("");
    }
    redraw();
  };
  const onPointerUp = (e: PointerEvent) => {
    drag.current = null;
    canvas.current?.releasePointerCapture(e.pointerId);
  };
  const onKeyDown = (e: KeyboardEvent) => {
    const page = Math.max(1, Math.round(n / 10));
    const i = indexRef.current;
    const keys: Record<string, () => void> = {
      ArrowDown: () => setIndex(i + 1), ArrowRight: () => setIndex(i + 1),
      ArrowUp: () => setIndex(i - 1), ArrowLeft: () => setIndex(i - 1),
      PageDown: () => setIndex(i + page), PageUp: () => setIndex(i - page),
      Home: () => setIndex(0), End: () => setIndex(n - 1),
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8),
      r: reset, R: reset, " ": () => setPlaying((p) => !p),
    };
    const digit = /^[1-9]$/.test(e.key) ? Number(e.key) : 0;
    const action = keys[e.key] ?? (digit && presets[digit - 1] ? () => choosePreset(presets[digit - 1].label) : undefined);
    if (!action || e.ctrlKey || e.metaKey || e.altKey) return;
    e.preventDefault();
    action();
  };

  const t = textures.current[index];
  const failure = failures.current[index];
  const where = frame.frames > 1 ? `Instance ${frame.instanceNumber || "?"}, frame ${frame.number}/${frame.frames}`
    : `Instance ${frame.instanceNumber || "?"}`;
  const zoomPercent = t && renderer.current && canvas.current
    ? Math.round(renderer.current.scale(t, shown.zoom) / (devicePixelRatio || 1) * 100) : Math.round(shown.zoom * 100);
  const round = (x: number) => (Math.abs(x) >= 100 ? Math.round(x) : Math.round(x * 10) / 10);

  if (fatal) return <p class="error" role="alert">{fatal}</p>;
  return (
    <div class="viewer">
      <div class="viewer-tools" role="toolbar" aria-label="Viewer tools" aria-controls="viewer-image">
        <div class="field">
          <label for="viewer-preset">Window</label>
          <select id="viewer-preset" value={preset} disabled={t?.kind === "rgb"}
            onChange={(e) => choosePreset(e.currentTarget.value)}>
            <option value="" disabled>Custom</option>
            {presets.map((p, i) => (
              <option key={`${p.label}-${i}`} value={p.label}>{`${p.label} (${round(p.center)}/${round(p.width)})`}</option>
            ))}
            <option value={FULL_RANGE}>{FULL_RANGE}</option>
          </select>
        </div>
        <button type="button" class="secondary" onClick={() => zoomBy(1.25)}>Zoom in</button>
        <button type="button" class="secondary" onClick={() => zoomBy(0.8)}>Zoom out</button>
        <button type="button" class="secondary" aria-pressed={panTool} onClick={() => setPanTool(!panTool)}>Pan tool</button>
        <button type="button" class="secondary" onClick={reset}>Reset</button>
        {n > 1 && (
          <>
            <button type="button" class="secondary" aria-pressed={playing} onClick={() => setPlaying(!playing)}>
              {playing ? "Pause" : "Play"}
            </button>
            <div class="field fps">
              <label for="viewer-fps">Frames per second</label>
              <input id="viewer-fps" type="number" min={1} max={60} value={fps}
                onInput={(e) => { const v = Number(e.currentTarget.value); if (v >= 1 && v <= 60) setFps(v); }} />
            </div>
          </>
        )}
      </div>
      <div class="viewport">
        <canvas id="viewer-image" ref={canvas} tabIndex={0} role="application" aria-roledescription="image viewer"
          aria-label={`Image ${index + 1} of ${n}`} aria-describedby="viewer-help" class={panTool ? "pan" : ""}
          onPointerDown={onPointerDown} onPointerMove={onPointerMove} onPointerUp={onPointerUp}
          onPointerCancel={onPointerUp} onKeyDown={onKeyDown} onContextMenu={(e) => e.preventDefault()} />
        <div class="overlay top-left">
          <div>{series.description || series.modality}</div>
          <div class="overlay-index">Image {index + 1}/{n}</div>
          <div>{where}</div>
        </div>
        <div class="overlay bottom-left">
          {t?.kind !== "rgb" && <div class="overlay-window">W {round(shown.width)} L {round(shown.center)}</div>}
          {frame.rendered && <div class="overlay-rendered" title={frame.rendered}>Rendered by the server</div>}
          <div class="overlay-zoom">Zoom {zoomPercent}%</div>
        </div>
        {!t && (
          <div class="overlay middle">{failure ? `Image ${index + 1} cannot be shown: ${failure}` : "Loading…"}</div>
        )}
      </div>
      {n > 1 && (
        <input class="viewer-slider" type="range" min={1} max={n} value={index + 1} aria-label="Image"
          aria-valuetext={`Image ${index + 1} of ${n}`} onInput={(e) => setIndex(Number(e.currentTarget.value) - 1)} />
      )}
      <div class="viewer-progress">
        <progress max={held} value={loaded} aria-label="Images loaded" />
        <span role="status" id="viewer-progress">
          {loaded === n ? `All ${n} ${n === 1 ? "image" : "images"} loaded`
            : held < n ? `Loaded ${loaded} of the ${held} images around this one (of ${n}; the GPU memory holds ${held})`
            : `Loaded ${loaded} of ${n} images`}
          {failed ? ` (${failed} cannot be shown)` : ""}
        </span>
      </div>
      <p id="viewer-help" class="viewer-help">
        Drag to change the window (right: wider, down: brighter level); shift-drag, middle-drag or the pan tool
        to pan; ctrl-drag or ctrl+wheel to zoom. Wheel, arrow keys, Page Up/Down, Home and End scroll; + and −
        zoom; R resets; Space plays; 1–9 choose a window preset.
      </p>
    </div>
  );
}
