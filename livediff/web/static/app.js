// livediff live page: draws what the service sends over /ws, built from the outputs the chain declared.
// Every string from the service goes into the page as text (textContent), never as markup; plot titles
// are escaped before plotly sees them.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage", "lasso2d", "select2d"] };
  const MARGIN = { l: 55, r: 15, t: 28, b: 35 };
  const COUNTS = [
    ["state", "state"], ["received", "received"], ["processed", "processed"], ["dropped", "dropped"],
    ["bad", "bad"], ["lost", "lost"], ["failed", "failed"], ["fps", "frames/s"], ["queue", "queue"],
    ["uptime_s", "uptime"],
  ];
  const TROUBLE = new Set(["dropped", "bad", "lost", "failed"]);

  const model = { epoch: null, parts: {}, rows: { frames: [], columns: {}, revision: 0 }, dirty: new Set(),
                  figures: new Map() };
  const CLOCK_COLUMNS = new Set(["timestamp", "received"]);
  let scheduled = false;

  // ---------------------------------------------------------------- helpers
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  function fmt(v, key) {
    if (v === null || v === undefined) return "–";
    if (key === "uptime_s") return duration(v);
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(Math.abs(v) < 10 ? 3 : 1);
  }
  function duration(s) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
    return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
  }
  function kvRows(table, entries) {
    const body = document.createDocumentFragment();
    for (const [key, value, attr] of entries) {
      const tr = el("tr");
      if (attr) tr.dataset.column = attr;
      tr.append(el("th", "", key), el("td", "value", fmt(value)));
      body.append(tr);
    }
    table.replaceChildren(body);
  }
  // Panels keep the order the chain declared its outputs in, whatever order their data arrive in.
  function rank(key) {
    const d = model.parts.header?.declared;
    if (!d) return 0;
    const order = ["image:frame"];
    for (const [label, names] of Object.entries(d.reductions)) for (const n of Object.keys(names)) order.push(`image:${label}.${n}`);
    for (const [label, names] of Object.entries(d.arrays)) {
      order.push(`profile:${label}`);
      for (const n of Object.keys(names)) order.push(`image:${label}.${n}`);
    }
    for (const label of Object.keys(d.reductions)) order.push(`profile:${label}`);
    for (const cols of Object.values(d.columns)) {
      for (const c of cols) order.push(`column:${c}`, `column:${c.replace(/n_spots$/, "hit_rate")}`);
    }
    const i = order.indexOf(key);
    return i < 0 ? order.length : i;
  }

  function figure(container, key, title, note) {
    let fig = model.figures.get(key);
    if (!fig) {
      fig = el("div", "figure");
      fig.dataset.part = key;
      fig.style.order = String(rank(key));
      fig.append(el("h3", "", title), el("p", "note", note || ""), el("div", "plot"));
      container.querySelector(".empty")?.remove();
      container.append(fig);
      model.figures.set(key, fig);
    } else {
      fig.querySelector(".note").textContent = note || "";
    }
    return fig.querySelector(".plot");
  }

  // ---------------------------------------------------------------- messages
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => connection("live", "live");
    ws.onclose = () => { connection("disconnected: retrying", "down"); setTimeout(connect, 1000); };
    ws.onmessage = (event) => receive(JSON.parse(event.data));
  }
  function connection(text, cls) {
    const c = $("connection");
    c.textContent = text;
    c.className = `connection ${cls}`;
  }
  function receive(msg) {
    if (msg.reset || msg.epoch !== model.epoch) reset(msg.epoch);
    for (const [key, payload] of Object.entries(msg.parts)) {
      model.parts[key] = payload;
      model.dirty.add(key);
    }
    if (msg.rows) {
      takeRows(msg.rows);
      model.dirty.add("rows");
    }
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  }
  function reset(epoch) {
    model.epoch = epoch;
    model.parts = {};
    model.rows = { frames: [], columns: {}, revision: 0 };
    for (const fig of model.figures.values()) { Plotly.purge(fig.querySelector(".plot")); fig.remove(); }
    model.figures.clear();
  }
  function takeRows(rows) {
    const r = model.rows;
    r.revision += 1;  // plotly redraws arrays changed in place only when told so
    if (rows.mode === "full") {
      r.frames = rows.frames;
      r.columns = rows.columns;
      return;
    }
    r.frames.push(...rows.frames);
    for (const [name, values] of Object.entries(rows.columns)) (r.columns[name] ||= []).push(...values);
    const keep = model.parts.header?.history ?? 1000;
    if (r.frames.length > keep) {
      const drop = r.frames.length - keep;
      r.frames.splice(0, drop);
      for (const values of Object.values(r.columns)) values.splice(0, drop);
    }
  }

  // ---------------------------------------------------------------- drawing
  function render() {
    scheduled = false;
    const dirty = model.dirty;
    model.dirty = new Set();
    const p = model.parts;
    if (dirty.has("header") && p.header) drawHeader(p.header);
    if (dirty.has("banners") && p.banners) drawBanners(p.banners);
    if (dirty.has("counts") && p.counts) drawCounts(p.counts);
    if (dirty.has("latest") && p.latest) drawLatest(p.latest);
    if (dirty.has("rows")) drawSeries();
    for (const key of dirty) {
      if (key.startsWith("image:")) drawImage(key);
      else if (key.startsWith("profile:")) drawProfile(key, p[key]);
    }
    if ([...dirty].some((k) => k.startsWith("values:"))) drawValues();
  }

  function drawHeader(h) {
    const s = h.series;
    $("title").textContent = s.series === undefined ? `waiting for a series from ${h.source}` :
      `series ${s.series}${s.protocol ? ` · ${s.protocol}` : ""}`;
    const entries = [["series", s.series], ["protocol", s.protocol], ["shape", s.shape ? s.shape.join(" × ") : null],
      ["dtype", s.dtype], ["frames expected", s.n_frames], ["count time (s)", s.count_time],
      ["scan", s.scan ? s.scan.join(" × ") : null], ["file", s.file], ["config", s.config_hash]];
    if (s.note) entries.push(["note", s.note]);
    for (const [k, v] of Object.entries(s.meta || {})) entries.push([`meta: ${k}`, v]);
    kvRows($("series"), entries.filter(([, v]) => v !== undefined));
  }

  function drawBanners(list) {
    $("banners").replaceChildren(...list.map((b) => {
      const d = el("div", `banner ${b.level}`, b.text);
      d.dataset.level = b.level;
      return d;
    }));
  }

  function drawCounts(c) {
    const box = $("counts");
    if (!box.children.length) {
      for (const [key, label] of COUNTS) {
        const tile = el("div", "tile");
        tile.dataset.key = key;
        tile.append(el("div", "label", label), el("div", "value", "–"));
        box.append(tile);
      }
    }
    for (const tile of box.children) {
      const key = tile.dataset.key;
      let value = c[key];
      if (key === "state" && c.state === "ended" && c.reason) value = `ended (${c.reason})`;
      const label = COUNTS.find(([k]) => k === key)[1];
      if (key === "processed" && c.n_frames) tile.querySelector(".label").textContent = `${label} of ${c.n_frames}`;
      if (TROUBLE.has(key) && key !== "lost") {
        tile.querySelector(".label").textContent = c.scope === "series" ? label : `${label} (since start)`;
      }
      tile.querySelector(".value").textContent = fmt(value, key);
      tile.classList.toggle("bad", TROUBLE.has(key) && value > 0);
    }
  }

  function drawLatest(l) {
    const entries = [["frame", l.frame, "frame"]];
    for (const [name, v] of Object.entries(l.values)) {
      if (name === "frame") continue;
      const clock = CLOCK_COLUMNS.has(name) && typeof v === "number";
      entries.push(clock ? [`${name} (UTC)`, new Date(v * 1000).toISOString().slice(11, 23), name] : [name, v, name]);
    }
    for (const [label, r] of Object.entries(l.rows)) entries.push([`${label} rows (frame ${r.frame})`, r.n, `rows:${label}`]);
    for (const [name, v] of Object.entries(l.hit_rates || {})) entries.push([`${name} (series)`, v, `series:${name}`]);
    kvRows($("latest"), entries);
  }

  function drawSeries() {
    const header = model.parts.header;
    const groups = header ? header.declared.columns : {};
    const owner = {};
    for (const [label, cols] of Object.entries(groups)) for (const c of cols) owner[c] = label;
    const r = model.rows;
    for (const [name, values] of Object.entries(r.columns)) {
      const label = owner[name] ?? owner[name.replace(/hit_rate$/, "n_spots")] ?? "";
      const note = name.endsWith("hit_rate") ?
        `fraction of the last 100 frames with ≥ ${header?.hit_min_spots} spots` : (label ? `from ${label}` : "livediff");
      const div = figure($("plots"), `column:${name}`, name, note);
      Plotly.react(div, [{ x: r.frames, y: values, type: "scatter", mode: "lines", line: { width: 1.2 },
                           name: plotText(name) }],
                   { margin: MARGIN, xaxis: { title: { text: "frame" } }, uirevision: name, showlegend: false,
                     datarevision: r.revision },
                   PLOT_CONFIG);
    }
  }

  const drawing = new Set();  // images being decoded: a newer part waits, then the latest is drawn

  async function drawImage(key) {
    if (drawing.has(key)) return;
    drawing.add(key);
    try {
      let part;
      do {
        part = model.parts[key];
        await drawImageOnce(key, part);
      } while (model.parts[key] !== part);
    } finally {
      drawing.delete(key);
    }
  }

  async function drawImageOnce(key, part) {
    if (!part) return;
    const img = key === "image:frame" ? part.image : part;
    const name = key === "image:frame" ? "latest frame" : key.slice(6);
    const traces = [];
    let note = key === "image:frame" ? (part.frame === null ? "" : `frame ${part.frame}`) : `${part.source}`;
    if (img) {
      const epoch = model.epoch;
      const z = await decode(img);
      if (model.epoch !== epoch) return;  // a new series began while decoding
      const x0 = (img.k - 1) / 2;
      traces.push({ type: "heatmap", z, x0, dx: img.k, y0: x0, dy: img.k, colorscale: "Viridis", zmin: 1, zmax: 255,
                    zsmooth: false, hovertemplate: "row %{y:.0f}, col %{x:.0f}<extra></extra>",
                    colorbar: { tickvals: img.ticks.map((t) => t[0]), ticktext: img.ticks.map((t) => t[1]), thickness: 12 } });
      note += `${note ? " · " : ""}${img.contrast} contrast${img.k > 1 ? `, ${img.k}×${img.k} binned` : ""}`;
    }
    const spots = key === "image:frame" ? part.spots : {};
    for (const [label, s] of Object.entries(spots)) {
      traces.push({ type: "scatter", mode: "markers", x: s.x, y: s.y, name: plotText(label),
                    marker: { symbol: "circle-open", size: 9, color: "#ff3b30", line: { width: 1.5 } },
                    hovertemplate: `${plotText(label)}: row %{y:.1f}, col %{x:.1f}<extra></extra>` });
      note += ` · ${s.n} ${label}`;
    }
    if (!traces.length) return;
    const shape = img ? img.shape : part.shape;
    const xr = shape ? [-0.5, shape[1] - 0.5] : undefined, yr = shape ? [shape[0] - 0.5, -0.5] : undefined;
    const div = figure($("images"), key, name, note);
    Plotly.react(div, traces, {
      margin: { l: 45, r: 10, t: 28, b: 30 }, showlegend: false, uirevision: key,
      xaxis: { range: xr, constrain: "domain", title: { text: "col" } },
      yaxis: { range: yr, scaleanchor: "x", constrain: "domain", title: { text: "row" } },
    }, PLOT_CONFIG);
  }

  async function decode(img) {
    const bytes = Uint8Array.from(atob(img.data), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const q = new Uint8Array(await new Response(stream).arrayBuffer());
    const [rows, cols] = img.size;
    const z = new Array(rows);
    for (let i = 0; i < rows; i++) {
      const row = new Array(cols);
      for (let j = 0; j < cols; j++) { const v = q[i * cols + j]; row[j] = v === 0 ? null : v; }
      z[i] = row;
    }
    return z;
  }

  function drawProfile(key, part) {
    if (!part || !part.traces.length) return;
    $("profiles-section").hidden = false;
    const div = figure($("profiles"), key, part.label, "");
    const traces = part.traces.map((t) => ({ type: "scatter", mode: "lines", name: plotText(t.name), x: t.x, y: t.y }));
    Plotly.react(div, traces, { margin: MARGIN, uirevision: key, xaxis: { title: { text: plotText(part.x_title) } },
                                legend: { orientation: "h", y: 1.15 } }, PLOT_CONFIG);
  }

  function drawValues() {
    const entries = [];
    for (const [key, part] of Object.entries(model.parts)) {
      if (!key.startsWith("values:")) continue;
      for (const [name, v] of Object.entries(part)) entries.push([`${key.slice(7)}.${name}`, v.map((x) => fmt(x)).join(", ")]);
    }
    $("values-section").hidden = !entries.length;
    kvRows($("values"), entries);
  }

  connect();
})();
