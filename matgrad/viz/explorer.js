// matgrad explorer: plain JavaScript, no framework, no network. The data is the JSON in
// #explorer-data, written by matgrad.viz.explorer; a live page also polls its own server.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const svg = $("graph");
  const nodes = D.nodes;
  const els = []; // node index -> <g>
  const edgeEls = []; // edge index -> <path>
  let selected = -1;
  let current = 0; // step
  let snap = -1; // training snapshot shown, -1: none

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }
  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 1e4 || a < 1e-3 ? v.toExponential(3) : String(Number(v.toPrecision(4)));
  }
  function shape(s) { return s[0] + "\u00d7" + s[1]; }
  // Rules are MathML rendered in Python by the docs' renderer; each is in D.maths once, and a
  // step holds placeholders (<span class="m" data-m="k">dA = G @ B.T</span>) put in place here.
  const maths = D.maths || [];
  function drawMaths(root) {
    for (const e of root.querySelectorAll(".m[data-m]")) {
      const m = maths[Number(e.dataset.m)];
      if (m !== undefined) { e.innerHTML = m; e.classList.add("drawn"); }
    }
  }

  // -- the graph ---------------------------------------------------------------------------
  function buildGraph() {
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#94a3b8" }, marker);
    const world = el("g", { id: "world" }, svg);
    const gClusters = el("g", {}, world), gEdges = el("g", {}, world), gNodes = el("g", {}, world);
    for (const c of D.clusters) {
      el("rect", { class: "cluster depth-" + (c.depth % 2), x: c.x, y: c.y, width: c.w, height: c.h, rx: 8 }, gClusters);
      const t = el("text", { class: "cluster-label", x: c.x + 8, y: c.y + 13 }, gClusters);
      t.textContent = c.label;
    }
    const seen = {};
    D.edges.forEach((e, i) => {
      const a = nodes[e.s], b = nodes[e.t];
      const key = e.s + ">" + e.t;
      const k = seen[key] = (seen[key] || 0) + 1;
      const off = (k - 1) * 9;
      const pts = [[a.x + a.w, a.y + a.h / 2 + off], ...(e.via || []).map((q) => [q[0], q[1] + off]), [b.x - 2, b.y + b.h / 2 + off]];
      let d = `M${pts[0][0]},${pts[0][1]}`;
      for (let j = 1; j < pts.length; j++) {
        const [x1, y1] = pts[j - 1], [x2, y2] = pts[j];
        const dx = Math.max(12, (x2 - x1) / 2);
        d += ` C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
      }
      const p = el("path", { class: "edge", "data-edge": i, d, "marker-end": "url(#arrow)" }, gEdges);
      edgeEls.push(p);
      if (e.label) {
        const [x1, y1] = pts[pts.length - 2], [x2, y2] = pts[pts.length - 1];
        const t = el("text", { class: "edge-label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 3, "text-anchor": "middle" }, gEdges);
        t.textContent = e.label;
      }
    });
    nodes.forEach((n, i) => {
      const g = el("g", { class: "node role-" + n.role, "data-node": n.id, "data-kind": n.kind, "data-grad": n.bwd >= 0 ? "1" : "0", transform: `translate(${n.x},${n.y})` }, gNodes);
      if (n.kind === "op") el("rect", { class: "shape", width: n.w, height: n.h, rx: n.h / 2 }, g);
      else el("rect", { class: "shape", width: n.w, height: n.h, rx: n.role === "const" ? 2 : 6 }, g);
      const t = el("text", { x: n.w / 2, y: n.kind === "op" ? n.h / 2 - 1 : 16, "text-anchor": "middle" }, g);
      t.textContent = n.title;
      const s = el("text", { class: "sub", x: n.w / 2, y: n.kind === "op" ? n.h / 2 + 10 : 30, "text-anchor": "middle" }, g);
      s.textContent = n.sub;
      const title = el("title", {}, g);
      title.textContent = n.title + " (" + shape(n.shape) + ")";
      g.addEventListener("click", (ev) => { if (!moved) select(i); ev.stopPropagation(); });
      els.push(g);
    });
    fit();
  }

  // pan and zoom through the viewBox
  let view = { x: 0, y: 0, w: 100, h: 100 };
  let moved = false;
  function setView() { svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`); }
  function fit() {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) { x0 = Math.min(x0, n.x); y0 = Math.min(y0, n.y); x1 = Math.max(x1, n.x + n.w); y1 = Math.max(y1, n.y + n.h); }
    for (const c of D.clusters) { x0 = Math.min(x0, c.x); y0 = Math.min(y0, c.y); x1 = Math.max(x1, c.x + c.w); y1 = Math.max(y1, c.y + c.h); }
    if (!isFinite(x0)) { x0 = y0 = 0; x1 = y1 = 100; }
    const pad = 20;
    view = { x: x0 - pad, y: y0 - pad, w: x1 - x0 + 2 * pad, h: y1 - y0 + 2 * pad };
    setView();
  }
  function installPanZoom() {
    let drag = null;
    svg.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, v: { ...view } }; moved = false; });
    svg.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const r = svg.getBoundingClientRect();
      const s = Math.max(view.w / r.width, view.h / r.height);
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { moved = true; svg.classList.add("dragging"); }
      if (moved) { view.x = drag.v.x - dx * s; view.y = drag.v.y - dy * s; setView(); }
    });
    const end = () => { drag = null; svg.classList.remove("dragging"); setTimeout(() => { moved = false; }, 0); };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointerleave", end);
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      const s = Math.max(view.w / r.width, view.h / r.height);
      const f = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
      // the point under the pointer stays put (preserveAspectRatio centres the view)
      const cx = view.x + view.w / 2 + (ev.clientX - r.left - r.width / 2) * s;
      const cy = view.y + view.h / 2 + (ev.clientY - r.top - r.height / 2) * s;
      view = { x: cx - (cx - view.x) * f, y: cy - (cy - view.y) * f, w: view.w * f, h: view.h * f };
      setView();
    }, { passive: false });
    svg.addEventListener("dblclick", fit);
  }

  // -- matrices ------------------------------------------------------------------------------
  function bytes(m) {
    if (!m._b) {
      const s = atob(m.d);
      const b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
      m._b = b;
    }
    return m._b;
  }
  function colour(q, lo, hi, big) {
    if (q === 255) return [217, 70, 239];
    const v = lo + (q / 254) * (hi - lo);
    const t = big > 0 ? Math.max(-1, Math.min(1, v / big)) : 0;
    const w = [248, 250, 252];
    const end = t >= 0 ? [220, 38, 38] : [37, 99, 235];
    const a = Math.abs(t);
    return [w[0] + (end[0] - w[0]) * a, w[1] + (end[1] - w[1]) * a, w[2] + (end[2] - w[2]) * a];
  }
  // Draws matrix m on a new canvas: as a matrix, or (tile) each row as a square image.
  function heatmap(m, asTiles, cls) {
    const b = bytes(m);
    const big = Math.max(Math.abs(m.lo), Math.abs(m.hi));
    const c = document.createElement("canvas");
    c.className = "heat " + cls;
    let W, H, put;
    if (asTiles && m.tile) {
      const s = m.tile, n = m.sr, per = Math.min(n, 16), rows = Math.ceil(n / per);
      W = per * (s + 1) - 1; H = rows * (s + 1) - 1;
      put = (img) => {
        for (let r = 0; r < n; r++) {
          const ox = (r % per) * (s + 1), oy = Math.floor(r / per) * (s + 1);
          for (let p = 0; p < s * s; p++) {
            const rgb = colour(b[r * m.sc + p], m.lo, m.hi, big);
            const o = ((oy + Math.floor(p / s)) * W + ox + (p % s)) * 4;
            img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 255;
          }
        }
      };
    } else {
      W = m.sc; H = m.sr;
      put = (img) => {
        for (let i = 0; i < W * H; i++) {
          const rgb = colour(b[i], m.lo, m.hi, big);
          img.data[4 * i] = rgb[0]; img.data[4 * i + 1] = rgb[1]; img.data[4 * i + 2] = rgb[2]; img.data[4 * i + 3] = 255;
        }
      };
    }
    c.width = W; c.height = H;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(W, H);
    if (asTiles && m.tile) for (let i = 3; i < img.data.length; i += 4) { img.data[i] = 255; img.data[i - 1] = 255; img.data[i - 2] = 255; img.data[i - 3] = 255; }
    put(img);
    ctx.putImageData(img, 0, 0);
    const maxW = 400, maxH = 300;
    let s = Math.min(maxW / W, maxH / H, 24);
    let cw = W * s, ch = H * s;
    if (ch < 12) ch = 12;
    if (cw < 12) cw = 12;
    c.style.width = Math.round(cw) + "px";
    c.style.height = Math.round(ch) + "px";
    return c;
  }
  function matNote(m, asTiles) {
    const notes = [];
    if (asTiles && m.tile) notes.push(`each row as a ${m.tile}\u00d7${m.tile} image`);
    if (m.sr * m.fr < m.r && m.fr === 1) notes.push(`first ${m.sr} of ${m.r} rows`);
    if (m.fr > 1 || m.fc > 1) notes.push(`downsampled ${m.fr}\u00d7${m.fc} (block means of ${m.r}\u00d7${m.c})`);
    return notes.join("; ");
  }

  // -- the inspector -------------------------------------------------------------------------
  const tileMode = {}; // node index -> show rows as images
  function matsOf(i) {
    const n = nodes[i];
    let v = n.v >= 0 ? D.mats[n.v] : null, g = n.g >= 0 ? D.mats[n.g] : null, from = "";
    if (snap >= 0 && D.train && n.kind === "param") {
      const s = D.train.snaps[snap];
      const p = s && s.p[n.name];
      if (p) { v = p[0]; g = p[1]; from = `training snapshot at step ${s.step}`; }
    }
    return { v, g, from };
  }
  function statsRow(label, m) {
    if (!m) return "";
    const s = m.stats;
    const bad = s[3] ? "" : ' <b style="color:#b91c1c">NaN/Inf present</b>';
    return `<tr><td>${label}</td><td>min ${fmt(s[0])}</td><td>mean ${fmt(s[1])}</td><td>max ${fmt(s[2])}${bad}</td></tr>`;
  }
  function heatBox(box, label, m, i, cls) {
    const asTiles = m.tile ? tileMode[i] !== false : false;
    const div = document.createElement("div");
    div.className = "heat-box";
    const head = document.createElement("div");
    head.className = "heat-head";
    head.innerHTML = `<span><b>${label}</b> ${shape([m.r, m.c])}</span><span class="small">${esc(matNote(m, asTiles))}</span>`;
    div.appendChild(head);
    div.appendChild(heatmap(m, asTiles, cls));
    const scale = document.createElement("div");
    scale.className = "scale";
    const big = Math.max(Math.abs(m.lo), Math.abs(m.hi));
    scale.innerHTML = `<span>${fmt(-big)}</span><span class="bar"></span><span>${fmt(big)}</span>`;
    if (m.tile) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = asTiles ? "show as matrix" : "show rows as images";
      b.addEventListener("click", () => { tileMode[i] = !asTiles; inspect(i); });
      scale.appendChild(b);
    }
    div.appendChild(scale);
    box.appendChild(div);
  }
  function inspect(i) {
    const box = $("inspector");
    const n = nodes[i];
    const { v, g, from } = matsOf(i);
    const kind = n.kind === "op" ? "op" : { input: "input", param: "parameter", const: "constant", root: "output" }[n.role];
    let h = `<div class="title">${esc(n.title)}</div><table>`;
    h += `<tr><td>kind</td><td colspan="3">${kind}${n.where ? " in " + esc(n.where) : ""}</td></tr>`;
    h += `<tr><td>shape</td><td colspan="3">${shape(n.shape)} ${esc(n.dtype)}${n.rg ? ", requires grad" : ""}</td></tr>`;
    h += statsRow("value", v) + statsRow("gradient", g) + "</table>";
    if (from) h += `<div class="small">${esc(from)}</div>`;
    if (n.rule) h += `<div class="rules">${n.rule.join("")}</div>`;
    box.innerHTML = h;
    drawMaths(box);
    if (v) heatBox(box, "value", v, i, "value");
    if (g) heatBox(box, "gradient", g, i, "grad");
    else {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = n.rg ? "no gradient reached this node" : "no gradient: it does not require grad";
      box.appendChild(p);
    }
  }
  function select(i) {
    if (selected >= 0) els[selected].classList.remove("selected");
    selected = i;
    els[i].classList.add("selected");
    inspect(i);
  }

  // -- stepping ------------------------------------------------------------------------------
  const steps = D.steps;
  const nf = D.forward_steps;
  function showStep(k) {
    current = Math.max(0, Math.min(steps.length - 1, k));
    const st = steps[current];
    if (!st) return;
    const backward = st.phase === "backward";
    nodes.forEach((n, i) => {
      const g = els[i].classList;
      g.toggle("active", i === st.node);
      g.toggle("pending", !backward && n.fwd > current);
      g.toggle("has-grad", backward && n.bwd >= 0 && n.bwd < current);
    });
    const flow = new Set(st.edges);
    edgeEls.forEach((p, e) => {
      p.classList.toggle("flow", backward && flow.has(e));
      p.classList.toggle("flow-fwd", !backward && flow.has(e));
    });
    const n = nodes[st.node];
    $("step-label").textContent = `${st.head}: ${n.title}`;
    let h = `<div class="head">${esc(st.head)}: ${esc(n.title)}${n.where ? ` <span class="small">in ${esc(n.where)}</span>` : ""}</div>` + st.html;
    $("rule").innerHTML = h;
    drawMaths($("rule"));
    if ($("step").value !== String(current)) $("step").value = String(current);
  }
  function installStepper() {
    const r = $("step");
    r.max = String(Math.max(0, steps.length - 1));
    $("phase-fwd").style.flex = String(Math.max(nf, 0.001));
    $("phase-bwd").style.flex = String(Math.max(steps.length - nf, 0.001));
    r.addEventListener("input", () => showStep(Number(r.value)));
    $("prev").addEventListener("click", () => showStep(current - 1));
    $("next").addEventListener("click", () => showStep(current + 1));
    let timer = null;
    $("play").addEventListener("click", () => {
      if (timer) { clearInterval(timer); timer = null; $("play").textContent = "play"; return; }
      if (current >= steps.length - 1) showStep(0);
      $("play").textContent = "pause";
      timer = setInterval(() => {
        if (current >= steps.length - 1) { clearInterval(timer); timer = null; $("play").textContent = "play"; return; }
        showStep(current + 1);
      }, 700);
    });
    if (!steps.length) {
      $("rule").innerHTML = '<p class="hint">No steps: the graph has no op.</p>';
      r.disabled = true;
    } else showStep(0);
    if (D.note) $("rule").insertAdjacentHTML("beforeend", `<p class="small">${esc(D.note)}</p>`);
  }

  // -- training ------------------------------------------------------------------------------
  function polyline(svgEl, cls, pts, xmax, ymin, ymax) {
    if (pts.length < 1) return;
    const span = ymax - ymin || 1;
    const d = pts.map(([x, y]) => `${((x / Math.max(xmax, 1)) * 400).toFixed(1)},${(115 - ((y - ymin) / span) * 110).toFixed(1)}`).join(" ");
    el("polyline", { class: cls, points: d }, svgEl);
  }
  function drawCurves() {
    const T = D.train;
    const L = $("loss-curve"), A = $("acc-curve");
    L.innerHTML = ""; A.innerHTML = "";
    const n = T.loss.length;
    const xmax = Math.max(n, 1);
    const losses = T.loss.map((v, i) => [i + 1, v]).filter((p) => p[1] !== null);
    const hi = Math.max(...losses.map((p) => p[1]), 1e-9);
    polyline(L, "loss", losses, xmax, 0, hi);
    polyline(A, "batch", T.acc.map((v, i) => [i + 1, v]).filter((p) => p[1] !== null), xmax, 0, 1);
    polyline(A, "train", T.epochs.map((e) => [e.step, e.train_acc]).filter((p) => p[1] !== null), xmax, 0, 1);
    polyline(A, "test", T.epochs.map((e) => [e.step, e.test_acc]).filter((p) => p[1] !== null), xmax, 0, 1);
    L.setAttribute("data-points", String(n));
    A.setAttribute("data-points", String(T.acc.length));
    const s = T.snaps[snap];
    if (s) for (const c of [L, A]) {
      const x = ((s.step / xmax) * 400).toFixed(1);
      el("line", { class: "marker", x1: x, x2: x, y1: 0, y2: 120 }, c);
    }
    const last = T.epochs[T.epochs.length - 1];
    const lossNow = losses.length ? losses[losses.length - 1][1] : null;
    $("loss-cap").textContent = losses.length
      ? `training loss per step, 0 to ${fmt(hi)} (now ${fmt(lossNow)}), over ${n} steps`
      : "no step yet";
    $("acc-cap").textContent = "accuracy from 0 to 100%: each batch, and train / test after each epoch" +
      (last && last.test_acc !== null ? ` (test ${(100 * last.test_acc).toFixed(1)}% after epoch ${last.epoch})` : "");
    const title = el("title", {}, L);
    title.textContent = `loss per step (max ${fmt(hi)})`;
    $("train-label").innerHTML = s
      ? `snapshot ${snap + 1}/${T.snaps.length}: weights and gradients after step ${s.step} (epoch ${s.epoch}), loss ${fmt(s.loss)}`
      : "no snapshot yet";
  }
  function showSnap(k) {
    const T = D.train;
    snap = T.snaps.length ? Math.max(0, Math.min(T.snaps.length - 1, k)) : -1;
    $("train-step").value = String(Math.max(snap, 0));
    drawCurves();
    if (selected >= 0 && nodes[selected].kind === "param") inspect(selected);
  }
  function installTraining() {
    if (!D.train) return;
    $("training").hidden = false;
    const r = $("train-step");
    const sync = () => { r.max = String(Math.max(0, D.train.snaps.length - 1)); };
    sync();
    r.addEventListener("input", () => showSnap(Number(r.value)));
    showSnap(D.train.snaps.length - 1);
    if (D.live) poll(sync);
  }
  function poll(sync) {
    const status = $("live-status");
    const T = D.train;
    status.textContent = "live";
    const tick = () => {
      const last = T.snaps.length ? T.snaps[T.snaps.length - 1].id : -1;
      fetch(`${D.live.url}?since=${last}`, { cache: "no-store" })
        .then((r) => r.json())
        .then((s) => {
          const follow = snap === T.snaps.length - 1;
          T.loss = s.loss; T.acc = s.acc; T.epochs = s.epochs; T.every = s.every; T.done = s.done;
          for (const x of s.snaps) T.snaps.push(x);
          sync();
          showSnap(follow ? T.snaps.length - 1 : snap);
          status.textContent = s.done ? "training finished" : `live: step ${s.loss.length}`;
          if (!s.done) setTimeout(tick, D.live.interval);
        })
        .catch(() => { status.textContent = "server stopped"; status.style.color = "#b91c1c"; });
    };
    setTimeout(tick, D.live.interval);
  }

  buildGraph();
  installPanZoom();
  installStepper();
  installTraining();
  window.matgradExplorer = { data: D, showStep, showSnap, select, ready: performance.now() };
  document.documentElement.setAttribute("data-ready", "1");
})();
