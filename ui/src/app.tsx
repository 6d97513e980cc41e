// The page: reads the search from the URL, keeps it there (pushState), and follows Back/Forward.
import { useEffect, useState } from "preact/hooks";
import { loadConfig, type UiConfig } from "./api";
import { fromUrl, toUrl, type Search } from "./query";
import { SearchPage } from "./search";

export function App() {
  const [search, setSearch] = useState<Search>(() => fromUrl(location.search));
  const [config, setConfig] = useState<UiConfig>({ oidc: null, viewer_url: null });

  useEffect(() => {
    loadConfig().then(setConfig, () => undefined); // without it: no viewer link, nothing else changes
    const onPop = () => setSearch(fromUrl(location.search));
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);

  const navigate = (next: Search) => {
    const url = `${location.pathname}${toUrl(next)}`;
    if (url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
    setSearch(next);
  };

  return (
    <>
      <a class="skip" href="#results">Skip to results</a>
      <header class="top">
        <h1>
          <a href="/ui/">DICOM archive</a>
        </h1>
      </header>
      <SearchPage search={search} navigate={navigate} config={config} />
    </>
  );
}
