// keti-ray operator view: polls /ui/state every 2 s and keeps one tile per node, one bar per
// GPU, one segment per partition. Only tiles whose node changed are rebuilt; off-screen tiles
// are skipped by the browser (content-visibility), so the 1,213-node openb view stays light.
"use strict";
(() => {
  const ROOT = document.body.dataset.root || "";
  const REFRESH_MS = 2000;
  const MANY_NODES = 200; // above this, thinner bars and narrower tiles (body.many)
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), tip = $("tip"), details = $("details");
  const tiles = new Map(); // node name -> {el, sig, text, booked}
  let nodes = {};
  let selected = null; // {node, gpu}
  const perf = (window.ketiUi = {
    generation: 0, firstPaintMs: null, allTilesMs: null, firstRenderMs: null, lastRenderMs: null,
    lastFetchMs: null, changedTiles: 0, tiles: 0, errors: 0,
  });

  // Colour by share: sky (small) -> indigo -> fuchsia (large); a whole GPU is amber.
  const RAMP = [[56, 189, 248], [129, 140, 248], [232, 121, 249]];
  const WHOLE = "#f59e0b";
  function shareColour(milli) {
    if (milli >= 1000) return WHOLE;
    const t = Math.min(Math.max((milli - 10) / 980, 0), 1) * (RAMP.length - 1);
    const i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i;
    const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);
  let prefix = "";  // shared by every node name (up to a separator): left out of tile labels
  function commonPrefix(names) {
    if (names.length < 2) return "";
    let p = names[0];
    for (const n of names) { while (!n.startsWith(p)) p = p.slice(0, -1); if (!p) return ""; }
    const cut = Math.max(p.lastIndexOf("-"), p.lastIndexOf("_"), p.lastIndexOf("."));
    return cut >= 0 ? p.slice(0, cut + 1) : "";
  }
  const label = (name) => (prefix && name.length > prefix.length ? name.slice(prefix.length) : name);
  const isBooked = (n) => n.gpus.some((g) => g.partitions.length > 0);
  const sms = (p) => (p.sms != null ? (p.device_sms ? `${p.sms}/${p.device_sms}` : `${p.sms}`) : "—");

  function tileInner(name, n) {
    let out = `<div class="th"><b title="${esc(name)}">${esc(label(name))}</b>` +
      `<span>${esc(n.model || "?")} ×${n.gpus.length}</span></div>`;
    for (const g of n.gpus) {
      let segs = "";
      for (const p of g.partitions) {
        segs += `<i class="seg" style="width:${p.milli / 10}%;background:${shareColour(p.milli)}"` +
          ` data-pod="${esc(p.pod)}" data-milli="${p.milli}"></i>`;
      }
      out += `<div class="gpu" data-gpu="${g.index}" data-free="${g.free_milli}">${segs}</div>`;
    }
    return out;
  }
  function searchText(name, n) {
    const pods = n.gpus.flatMap((g) => g.partitions.map((p) => p.pod));
    return [name, n.model || "", ...pods].join(" ").toLowerCase();
  }

  // "model" groups nodes of one GPU count and model, so a row of tiles has one height;
  // "name" keeps the allocator's node order.
  function ordered(next) {
    const names = Object.keys(next);
    if ($("sort").value !== "model") return names;
    const at = new Map(names.map((n, i) => [n, i]));
    return names.sort((a, b) => next[b].gpus.length - next[a].gpus.length ||
      String(next[a].model).localeCompare(String(next[b].model)) || at.get(a) - at.get(b));
  }

  // The first build paints the first screenful (CHUNK tiles) at once, then adds the rest.
  const CHUNK = 200;
  const nextFrame = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
  const tileHTML = (name, n) =>
    `<div class="tile${isBooked(n) ? " booked" : ""}" data-node="${esc(name)}">${tileInner(name, n)}</div>`;
  let queue = Promise.resolve(); // renders run one after another (refresh, re-order)
  const schedule = (fn) => (queue = queue.then(fn));

  function addTiles(part, next, start) {
    grid.insertAdjacentHTML("beforeend", part.map((name) => tileHTML(name, next[name])).join(""));
    let el = grid.children[start];
    for (const name of part) {
      const n = next[name];
      tiles.set(name, { el, sig: JSON.stringify(n), text: searchText(name, n), booked: isBooked(n) });
      el = el.nextElementSibling;
    }
  }

  async function build(names, next) {
    grid.innerHTML = "";
    addTiles(names.slice(0, CHUNK), next, 0);
    await nextFrame(); // the first screenful is painted here
    if (perf.firstPaintMs === null) perf.firstPaintMs = performance.now();
    if (names.length > CHUNK) {
      addTiles(names.slice(CHUNK), next, CHUNK);
      await nextFrame();
    }
    if (perf.allTilesMs === null) perf.allTilesMs = performance.now();
  }

  async function render(next) {
    const t0 = performance.now();
    let changed = 0;
    const names = ordered(next);
    const newPrefix = commonPrefix(names);
    if (newPrefix !== prefix) { prefix = newPrefix; grid.innerHTML = ""; tiles.clear(); }
    nodes = next;
    if (tiles.size === 0) {
      await build(names, next);
      changed = names.length;
    } else {
      const seen = new Set();
      let prev = null;
      for (const name of names) {
        seen.add(name);
        const n = next[name];
        const sig = JSON.stringify(n);
        let t = tiles.get(name);
        if (!t) {
          const el = document.createElement("div");
          el.className = "tile";
          el.dataset.node = name;
          t = { el, sig: null };
          tiles.set(name, t);
        }
        const want = prev ? prev.nextElementSibling : grid.firstElementChild;
        if (want !== t.el) { if (prev) prev.after(t.el); else grid.prepend(t.el); } // new or moved
        if (t.sig !== sig) {
          t.el.innerHTML = tileInner(name, n);
          t.booked = isBooked(n);
          t.el.classList.toggle("booked", t.booked);
          t.sig = sig;
          t.text = searchText(name, n);
          changed++;
        }
        prev = t.el;
      }
      for (const [name, t] of tiles) {
        if (!seen.has(name)) { t.el.remove(); tiles.delete(name); changed++; }
      }
    }
    applyFilter();
    if (selected && !details.hidden) showDetails(); else markSelectionOnly();
    perf.changedTiles = changed;
    return performance.now() - t0;
  }

  function applyFilter() {
    const q = $("filter").value.trim().toLowerCase();
    const bookedOnly = $("booked").checked;
    let shown = 0;
    for (const t of tiles.values()) {
      const hide = (q !== "" && !t.text.includes(q)) || (bookedOnly && !t.booked);
      if (t.el.classList.contains("hidden") !== hide) t.el.classList.toggle("hidden", hide);
      if (!hide) shown++;
    }
    $("shown").textContent = `${shown} of ${tiles.size} nodes` + (prefix ? ` (${prefix}…)` : "");
  }

  // ---- headline ------------------------------------------------------------------------
  const pct = (v) => (v == null ? "—" : `${v.toFixed(1)}%`);
  const ms = (v) => (v == null ? "—" : v < 1 ? v.toPrecision(2) : v.toFixed(1));
  function headline(s, all) {
    $("h-unallocated").textContent = pct(s.unallocated_gpu_pct);
    $("h-gpus").textContent = s.gpus != null ? `of ${s.gpus} GPUs` : "";
    $("h-frag").textContent = pct(s.fragmentation_pct);
    $("h-placed").textContent = s.pods_placed == null ? "—" : String(s.pods_placed);
    const d = s.decisions || {};
    $("h-decisions").textContent = Object.keys(d).length
      ? Object.entries(d).map(([k, v]) => `${k} ${v}`).join(" · ") : "no decisions yet";
    $("h-refused").textContent = String(s.refused ?? "—");
    const lat = s.latency || {};
    $("h-latency").textContent = lat.p50_ms == null ? "—" : `${ms(lat.p50_ms)} / ${ms(lat.p99_ms)} ms`;
    $("h-latency-window").textContent = lat.window || "";
    let shared = 0, whole = 0;
    for (const n of Object.values(all)) {
      for (const g of n.gpus) {
        if (g.partitions.some((p) => p.milli < 1000)) shared++;
        else if (g.partitions.length) whole++;
      }
    }
    $("h-nodes").textContent = String(Object.keys(all).length);
    $("h-split").textContent = `${shared} GPUs shared · ${whole} whole`;
    const policy = $("policy");
    policy.textContent = `policy ${s.policy ?? "?"}`;
    policy.classList.toggle("error", Boolean(s.policy_error));
    policy.title = s.policy_error ? `checkpoint refused: ${s.policy_error}` : "policy version serving decisions";
    const warn = $("warn");
    const missing = s.missing_metrics || [];
    warn.hidden = missing.length === 0;
    warn.textContent = missing.length ? `The allocator does not export ${missing.join(", ")}: those numbers show —.` : "";
  }

  // ---- hover and selection -------------------------------------------------------------
  function gpuTable(name, g, pod) {
    const free = `${g.free_milli} milli free`;
    let rows = "";
    for (const p of g.partitions) {
      const bold = p.pod === pod ? ' style="font-weight:650"' : "";
      rows += `<tr${bold}><td><i style="background:${shareColour(p.milli)}"></i>${esc(p.pod)}</td>` +
        `<td>${p.sm_pct}%</td><td>${p.milli}</td><td>${sms(p)}</td><td>${esc(p.mechanism)}</td></tr>`;
    }
    const table = rows
      ? `<table><tr><th>pod</th><th>share</th><th>milli</th><th>SMs</th><th>mechanism</th></tr>${rows}</table>`
      : `<div class="mono">no partitions</div>`;
    return `<div class="dt">${esc(name)} · GPU ${g.index} <span class="mono">${free}</span></div>` +
      `<div class="mono">${esc(g.uuid)}</div>${table}`;
  }
  function hit(target) {
    const bar = target.closest(".gpu");
    const tile = target.closest(".tile");
    if (!tile) return null;
    const n = nodes[tile.dataset.node];
    if (!n) return null;
    return { node: tile.dataset.node, gpu: bar ? Number(bar.dataset.gpu) : null, n };
  }
  grid.addEventListener("mousemove", (e) => {
    const h = hit(e.target);
    if (!h || h.gpu == null) { tip.hidden = true; return; }
    const seg = e.target.closest(".seg");
    tip.innerHTML = gpuTable(h.node, h.n.gpus[h.gpu], seg ? seg.dataset.pod : null);
    tip.hidden = false;
    const w = tip.offsetWidth, ht = tip.offsetHeight;
    const x = e.clientX + 14 + w > innerWidth ? e.clientX - w - 14 : e.clientX + 14;
    const y = e.clientY + 14 + ht > innerHeight ? e.clientY - ht - 14 : e.clientY + 14;
    tip.style.left = `${Math.max(4, x)}px`;
    tip.style.top = `${Math.max(4, y)}px`;
  });
  grid.addEventListener("mouseleave", () => { tip.hidden = true; });
  grid.addEventListener("click", (e) => {
    const h = hit(e.target);
    selected = h ? { node: h.node, gpu: h.gpu } : null;
    showDetails();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { selected = null; showDetails(); }
  });
  function showDetails() {
    const n = selected && nodes[selected.node];
    if (!n) { details.hidden = true; markSelectionOnly(); return; }
    const gpus = selected.gpu == null ? n.gpus : [n.gpus[selected.gpu]];
    details.innerHTML = `<div class="dt">${esc(selected.node)} <span class="mono">${esc(n.model || "")}` +
      ` · ${n.gpus.length} GPUs · Esc closes</span></div>` +
      gpus.map((g) => `<div style="margin-top:8px">${gpuTable(selected.node, g, null)}</div>`).join("");
    details.hidden = false;
    markSelectionOnly();
  }
  function markSelectionOnly() {
    for (const el of grid.querySelectorAll(".sel")) el.classList.remove("sel");
    if (!selected || !tiles.has(selected.node)) return;
    const el = tiles.get(selected.node).el;
    el.classList.add("sel");
    if (selected.gpu != null) el.querySelector(`.gpu[data-gpu="${selected.gpu}"]`)?.classList.add("sel");
  }

  $("filter").addEventListener("input", applyFilter);
  $("booked").addEventListener("change", applyFilter);
  $("sort").addEventListener("change", () =>
    schedule(() => { grid.innerHTML = ""; tiles.clear(); return render(nodes); }));
  $("signout").addEventListener("click", async () => {
    await fetch(`${ROOT}/ui/session`, { method: "DELETE", credentials: "same-origin" });
    location.reload();
  });

  // ---- refresh loop --------------------------------------------------------------------
  const status = $("status");
  async function tick() {
    const t0 = performance.now();
    try {
      // the first answer comes from the page's <link rel=preload>; /ui/state is no-store
      const r = await fetch(`${ROOT}/ui/state`, { credentials: "same-origin" });
      if (r.status === 401) { status.textContent = "signed out"; location.reload(); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const body = await r.json();
      const fetched = performance.now();
      document.body.classList.toggle("many", Object.keys(body.nodes).length > MANY_NODES);
      headline(body.summary, body.nodes);
      const renderMs = await schedule(() => render(body.nodes));
      perf.generation++;
      perf.lastFetchMs = fetched - t0;
      perf.lastRenderMs = renderMs;
      perf.tiles = tiles.size;
      if (perf.generation === 1) perf.firstRenderMs = renderMs;
      document.body.dataset.generation = String(perf.generation);
      status.classList.remove("stale");
      status.textContent = `updated ${new Date().toLocaleTimeString()} · ` +
        `fetch ${perf.lastFetchMs.toFixed(0)} ms · render ${renderMs.toFixed(0)} ms`;
    } catch (e) {
      perf.errors++;
      status.classList.add("stale");
      status.textContent = `stale: ${e.message}`;
    } finally {
      setTimeout(tick, Math.max(0, REFRESH_MS - (performance.now() - t0)));
    }
  }
  tick();
})();
