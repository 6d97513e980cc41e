// The page: /ui/ is the search (its query in the URL), /ui/study/<uid> a study. Links are real
// links; a plain click moves with pushState, and Back/Forward walk it (popstate).
import { useEffect, useRef, useState } from "preact/hooks";
import { loadConfig, type UiConfig } from "./api";
import { fromUrl, toUrl, type Search } from "./query";
import { may } from "./auth";
import { SessionBar, useSession } from "./session";
import { SearchPage } from "./search";
import { StudyPage } from "./study";
import { lazy, Suspense } from "preact/compat";

const ObjectPage = lazy(() => import("./objectpage")); // PDF, SR, audio: loaded when one is opened
import { UploadPage } from "./upload";
import { ViewerPage } from "./viewer";

const STUDY = /^\/ui\/study\/([0-9.]{1,64})\/?$/;
const UPLOAD = /^\/ui\/upload\/?$/;
const SERIES = /^\/ui\/study\/([0-9.]{1,64})\/series\/([0-9.]{1,64})\/?$/; // the stack viewer
const OBJECT = /^\/ui\/study\/([0-9.]{1,64})\/series\/([0-9.]{1,64})\/instance\/([0-9.]{1,64})\/?$/;

interface Where {
  study: string | null;
  search: Search;
}

function here(): Where {
  const study = STUDY.exec(location.pathname);
  return { study: study ? study[1] : null, search: fromUrl(location.search) };
}

export function App({ initial }: { initial?: UiConfig }) {
  const [where, setWhere] = useState<Where>(here);
  const [config, setConfig] = useState<UiConfig>(initial ?? { oidc: null, viewer_url: null });
  const inApp = useRef(false); // whether Back stays in this page (a study opened from the list)

  useEffect(() => {
    if (!initial) loadConfig().then(setConfig, () => undefined); // without it: no viewer link, nothing else changes
    const onPop = () => setWhere(here());
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);

  const go = (url: string) => {
    if (url !== `${location.pathname}${location.search}`) {
      history.pushState(null, "", url);
      inApp.current = true;
    }
    setWhere(here());
  };
  const navigate = (next: Search) => go(`/ui/${toUrl(next)}`);
  const open = (uid: string) => go(`/ui/study/${uid}`);
  const back = () => (inApp.current ? history.back() : go("/ui/"));

  const session = useSession();
  const viewed = SERIES.exec(location.pathname);
  const object = OBJECT.exec(location.pathname);
  if (object) {
    const study = object[1];
    return (
      <>
        <header class="top"><h1><a href="/ui/">DICOM archive</a></h1><SessionBar /></header>
        <Suspense fallback={<p class="status" role="status">Loading…</p>}>
          <ObjectPage study={study} series={object[2]} instance={object[3]}
            back={() => (inApp.current ? history.back() : go(`/ui/study/${study}`))} />
        </Suspense>
      </>
    );
  }
  return (
    <>
      {viewed ? <a class="skip" href="#viewer-title">Skip to the viewer</a> : <a class="skip" href={where.study ? "#study-title" : "#results"}>Skip to {where.study ? "the study" : "results"}</a>}
      <header class="top">
        <h1>
          <a href="/ui/">DICOM archive</a>
        </h1>
        <SessionBar />
        {may(session, "writer") ? <a class="upload-link" href="/ui/upload">Upload</a> : null}
      </header>
      {viewed ? <ViewerPage study={viewed[1]} series={viewed[2]} />
        : UPLOAD.test(location.pathname) ? <UploadPage /> : where.study ? <StudyPage uid={where.study} back={back} open={go} />
        : <SearchPage search={where.search} navigate={navigate} config={config} open={open} />}
    </>
  );
}
