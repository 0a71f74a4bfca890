// The slide viewer: OpenSeadragon on Histo-IA's Deep Zoom tiles, a prediction's result images as
// overlays (toggle, opacity), the tissue outline, the value of the tile under the pointer and,
// for a run that keeps every nucleus, the nuclei in view as outlines once zoomed in.
// Configuration comes from the page (json_script "viewer-config"); everything is same-origin.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("viewer-config").textContent);
  const element = document.getElementById("viewer");
  const readout = document.querySelector("[data-readout]");
  const opacityInput = document.querySelector("[data-layer-opacity]");
  const outlineToggle = document.querySelector("[data-outline-toggle]");
  const SVG = "http://www.w3.org/2000/svg";

  const viewer = OpenSeadragon({
    element,
    prefixUrl: config.prefixUrl,
    tileSources: config.dzi,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    showRotationControl: false,
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    // A click reads (and keeps) a tile's value; double-click still zooms.
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });

  const state = { layers: {}, visible: {}, data: null, index: new Map(), pinned: null };
  // For tests and the curious: window.histoiaViewer.viewer is the OpenSeadragon viewer.
  window.histoiaViewer = { viewer, layers: state.layers, state };

  // -- overlays: one simple image per result, stretched over the whole slide --------------------
  const opacity = () => (opacityInput ? opacityInput.value / 100 : 0.55);

  function applyOpacity() {
    for (const [name, item] of Object.entries(state.layers)) {
      item.setOpacity(state.visible[name] === false ? 0 : opacity());
    }
  }

  function addLayers() {
    const slideItem = viewer.world.getItemAt(0);
    const bounds = slideItem.getBounds();
    for (const layer of config.layers) {
      state.visible[layer.name] = true;
      viewer.addTiledImage({
        tileSource: { type: "image", url: layer.url, buildPyramid: false },
        x: bounds.x, y: bounds.y, width: bounds.width,
        opacity: opacity(),
        success: (event) => {
          state.layers[layer.name] = event.item;
          applyOpacity();
          element.dataset.layersLoaded = String(Object.keys(state.layers).length);
        },
        error: () => { element.dataset.layerError = layer.name; },
      });
    }
  }

  document.addEventListener("input", (event) => {
    if (event.target.matches("[data-layer-opacity]")) applyOpacity();
    if (event.target.matches("[data-layer-toggle]")) {
      state.visible[event.target.dataset.layerToggle] = event.target.checked;
      applyOpacity();
    }
    if (event.target.matches("[data-outline-toggle]")) outline.style.display = event.target.checked ? "" : "none";
  });

  // -- SVG layer in level-0 pixel coordinates: tissue outline and the highlighted tile ----------
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "viewer-svg");
  const group = document.createElementNS(SVG, "g");
  const outline = document.createElementNS(SVG, "path");
  outline.setAttribute("class", "tissue-outline");
  const highlight = document.createElementNS(SVG, "rect");
  highlight.setAttribute("class", "tile-highlight");
  highlight.style.display = "none";
  const nucleiGroup = document.createElementNS(SVG, "g");
  nucleiGroup.setAttribute("class", "nuclei");
  nucleiGroup.style.display = "none";
  group.append(outline, nucleiGroup, highlight);
  svg.append(group);
  viewer.canvas.append(svg);

  function syncSvg() {
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    const origin = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const right = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(config.slide.width, 0));
    const scale = (right.x - origin.x) / config.slide.width;
    group.setAttribute("transform", `translate(${origin.x} ${origin.y}) scale(${scale})`);
  }
  viewer.addHandler("update-viewport", syncSvg);
  viewer.addHandler("resize", syncSvg);

  function drawOutline(rings) {
    outline.setAttribute("d", rings.map((ring) =>
      "M" + ring.map(([x, y]) => `${x} ${y}`).join("L") + "Z").join(""));
    if (outlineToggle && !outlineToggle.checked) outline.style.display = "none";
  }

  // -- the value of the tile under the pointer --------------------------------------------------
  function format(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 1000 ? Math.round(value).toLocaleString("en") : value.toPrecision(3);
    }
    return String(value);
  }

  function setReadout(parts) {
    readout.replaceChildren(...parts.map(([label, value, strong]) => {
      const span = document.createElement("span");
      span.className = strong ? "value primary" : "value";
      if (label) {
        const name = document.createElement("span");
        name.className = "muted";
        name.textContent = label + " ";
        span.append(name);
      }
      span.append(document.createTextNode(value));
      return span;
    }));
  }

  function tileAt(position) {
    const item = viewer.world.getItemAt(0);
    if (!item) return null;
    const p = item.viewerElementToImageCoordinates(position);
    const inside = p.x >= 0 && p.y >= 0 && p.x < config.slide.width && p.y < config.slide.height;
    return { x: p.x, y: p.y, inside };
  }

  function show(position) {
    const at = tileAt(position);
    if (!at) return null;
    if (!at.inside) {
      highlight.style.display = "none";
      setReadout([["", "Outside the slide."]]);
      return null;
    }
    const where = `x ${Math.floor(at.x).toLocaleString("en")}, y ${Math.floor(at.y).toLocaleString("en")} px`;
    const data = state.data;
    if (!data || !data.tile_size) {
      highlight.style.display = "none";
      setReadout([["", where]]);
      return null;
    }
    const size = data.tile_size;
    const row = Math.floor(at.y / size);
    const col = Math.floor(at.x / size);
    highlight.setAttribute("x", col * size);
    highlight.setAttribute("y", row * size);
    highlight.setAttribute("width", Math.min(size, config.slide.width - col * size));
    highlight.setAttribute("height", Math.min(size, config.slide.height - row * size));
    highlight.style.display = "";
    const i = state.index.get(`${row},${col}`);
    if (i === undefined) {
      highlight.classList.add("empty");
      setReadout([["", `Tile row ${row}, col ${col} · ${where}`], ["", "not analysed (too little tissue)"]]);
      return { row, col, values: null };
    }
    highlight.classList.remove("empty");
    const values = data.tiles[i].slice(2);
    const parts = [["", `Tile row ${row}, col ${col} · ${where}`]];
    data.columns.forEach((column, k) => {
      const primary = data.primary && data.primary.column === column;
      parts.push([primary ? data.primary.label : column, format(values[k]), primary]);
    });
    setReadout(parts);
    return { row, col, values };
  }

  new OpenSeadragon.MouseTracker({
    element: viewer.canvas,
    moveHandler: (event) => { if (!state.pinned) state.hovered = show(event.position); },
  });
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick) return;  // a drag, not a click
    const tile = show(event.position);
    const key = tile ? `${tile.row},${tile.col}` : null;
    state.pinned = key && key !== state.pinned ? key : null;
    readout.classList.toggle("pinned", Boolean(state.pinned));
    window.histoiaViewer.lastTile = tile;
  });

  // -- nuclei: the run's per-nucleus records in view, as circles, once zoomed in -----------------
  // The server answers at most 5,000 objects a box (GET detections.json?x0=&y0=&x1=&y1=, level-0
  // px); below NUCLEI_MAX_SPAN level-0 px across the view, a view holds far fewer nuclei than that.
  const NUCLEI_MAX_SPAN = 1500;   // level-0 px across the view, at most
  const NUCLEI_MARGIN = 0.15;     // fetch this much more on each side, so a small pan needs nothing
  const NUCLEI_DEBOUNCE_MS = 200;
  const nucleiToggle = document.querySelector("[data-nuclei-toggle]");
  const nucleiStatus = document.querySelector("[data-nuclei-status]");
  const nucleiNote = document.createElement("div");
  nucleiNote.className = "viewer-note";
  nucleiNote.textContent = "Zoom in to see nuclei";
  nucleiNote.hidden = true;
  element.append(nucleiNote);
  const nuclei = { url: null, timer: null, box: null, truncated: false, request: 0, count: 0 };
  window.histoiaViewer.nuclei = nuclei;

  function setNucleiState(value, count) {
    element.dataset.nuclei = value;
    if (count !== undefined) element.dataset.nucleiCount = String(count);
  }

  function visibleBox() {
    const item = viewer.world.getItemAt(0);
    if (!item) return null;
    const rect = item.viewportToImageRectangle(viewer.viewport.getBounds(true));
    return { x0: rect.x, y0: rect.y, x1: rect.x + rect.width, y1: rect.y + rect.height };
  }

  function nucleiWanted() {
    return Boolean(nuclei.url) && (!nucleiToggle || nucleiToggle.checked);
  }

  function updateNuclei() {
    nuclei.timer = null;
    const view = visibleBox();
    if (!nucleiWanted() || !view) {
      nuclei.request += 1;   // an answer still on its way is not drawn
      nucleiGroup.style.display = "none";
      nucleiNote.hidden = true;
      setNucleiState("off");
      return;
    }
    if (view.x1 - view.x0 > NUCLEI_MAX_SPAN) {
      nuclei.request += 1;
      nucleiGroup.style.display = "none";
      nucleiNote.hidden = false;
      if (nucleiStatus) nucleiStatus.textContent = "zoom in to see them";
      setNucleiState("zoomed-out");
      return;
    }
    nucleiNote.hidden = true;
    nucleiGroup.style.display = "";
    const have = nuclei.box;
    if (have && !nuclei.truncated && view.x0 >= have.x0 && view.y0 >= have.y0 && view.x1 <= have.x1 && view.y1 <= have.y1) {
      setNucleiState("shown");   // already drawn with a margin around the view
      return;
    }
    const mx = (view.x1 - view.x0) * NUCLEI_MARGIN, my = (view.y1 - view.y0) * NUCLEI_MARGIN;
    const box = {
      x0: Math.max(0, Math.floor(view.x0 - mx)), y0: Math.max(0, Math.floor(view.y0 - my)),
      x1: Math.min(config.slide.width, Math.ceil(view.x1 + mx)), y1: Math.min(config.slide.height, Math.ceil(view.y1 + my)),
    };
    if (box.x1 <= box.x0 || box.y1 <= box.y0) {   // the view is off the slide
      drawNuclei([], box, false);
      return;
    }
    const request = ++nuclei.request;
    setNucleiState("loading");
    const query = new URLSearchParams({ x0: box.x0, y0: box.y0, x1: box.x1, y1: box.y1 });
    fetch(`${nuclei.url}?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((data) => { if (request === nuclei.request) drawNuclei(data.objects, box, data.truncated, data.total); })
      .catch(() => { if (request === nuclei.request) setNucleiState("failed"); });
  }

  function drawNuclei(objects, box, truncated, total) {
    const fragment = document.createDocumentFragment();
    for (const [x, y, r] of objects) {
      const circle = document.createElementNS(SVG, "circle");
      circle.setAttribute("cx", x);
      circle.setAttribute("cy", y);
      circle.setAttribute("r", Math.max(r, 1));
      fragment.append(circle);
    }
    nucleiGroup.replaceChildren(fragment);
    nuclei.box = box;
    nuclei.truncated = truncated;
    nuclei.count = objects.length;
    if (nucleiStatus) {
      nucleiStatus.textContent = truncated
        ? `${objects.length.toLocaleString("en")} of ${total.toLocaleString("en")} near the view`
        : `${objects.length.toLocaleString("en")} near the view`;
    }
    setNucleiState("shown", objects.length);
  }

  function scheduleNuclei() {
    if (!nuclei.url) return;
    if (nuclei.timer) clearTimeout(nuclei.timer);
    nuclei.timer = setTimeout(updateNuclei, NUCLEI_DEBOUNCE_MS);
  }
  viewer.addHandler("viewport-change", scheduleNuclei);
  viewer.addHandler("resize", scheduleNuclei);
  if (nucleiToggle) nucleiToggle.addEventListener("change", () => {
    nuclei.box = null;   // drawn again from a fresh answer when shown again
    updateNuclei();
  });

  function enableNuclei(url) {
    nuclei.url = url;
    const panel = document.querySelector("[data-nuclei-panel]");
    if (panel) panel.hidden = false;
    scheduleNuclei();
  }

  // -- start ------------------------------------------------------------------------------------
  viewer.addOnceHandler("open", () => {
    addLayers();
    syncSvg();
    scheduleNuclei();
    element.dataset.ready = "1";
  });
  viewer.addHandler("open-failed", () => {
    setReadout([["", "The slide could not be opened in the viewer."]]);
    element.dataset.ready = "failed";
  });
  if (config.overlay) {
    fetch(config.overlay, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((data) => {
        state.data = data;
        data.tiles.forEach((tile, i) => state.index.set(`${tile[0]},${tile[1]}`, i));
        drawOutline(data.tissue_outline || []);
        if (data.has_detections && data.detections_url) enableNuclei(data.detections_url);
        element.dataset.overlayData = "1";
      })
      .catch(() => { element.dataset.overlayData = "failed"; });
  }
})();
