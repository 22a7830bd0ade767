// sbir-bench report: a static page over data/report.js and data/run-<i>.js (loaded when first needed).
// Views by URL hash: #table, #runs, #run/<i>, #queries/<i>, #query/<i>/<q>, #compare/<i>/<j>, #pair/<i>/<j>/<q>.
"use strict";
(function () {
  const R = window.SBIR_REPORT;
  const view = document.getElementById("view");
  const PAGE = 50;
  const state = { sort: {}, page: {}, filter: {} };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
    return node;
  }
  const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(d));
  const signed = (v) => (v === null || Number.isNaN(v) ? "-" : (v >= 0 ? "+" : "") + v.toFixed(4));

  function loadRun(i) {
    return new Promise((resolve, reject) => {
      if (window.SBIR_RUNS && window.SBIR_RUNS[i]) return resolve(window.SBIR_RUNS[i]);
      if (!R.runs[i] || !R.runs[i].has_queries) return reject(new Error("run " + i + " saved no embeddings"));
      const s = document.createElement("script");
      s.src = "data/run-" + i + ".js";
      s.onload = () => resolve(window.SBIR_RUNS[i]);
      s.onerror = () => reject(new Error("data/run-" + i + ".js could not be loaded"));
      document.body.append(s);
    });
  }

  function image(src, alt) {
    if (!src) return el("div", { class: "ph", title: "no thumbnail: " + (alt || "") }, "no thumbnail");
    const img = el("img", { src: src, alt: alt || "", loading: "lazy" });
    img.addEventListener("error", () => img.replaceWith(el("div", { class: "ph" }, "missing")));
    return img;
  }

  function runName(run) { return `${run.label} | ${run.dataset} ${run.setting} split ${run.split} | seed ${run.seed}`; }

  // ---------------------------------------------------------------- the table
  function tableView() {
    const t = R.table;
    const key = state.sort.table;
    let rows = t.rows.slice();
    if (key !== undefined) {
      const [col, dir] = key;
      rows.sort((a, b) => {
        const x = col < 0 ? a.label : a.values[col].mean, y = col < 0 ? b.label : b.values[col].mean;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
    }
    const head = el("tr", {}, el("th", { onclick: () => sortTable(-1) }, "Method"),
      t.head.map((h, j) => el("th", { onclick: () => sortTable(j) }, h)));
    const body = rows.map((r) => el("tr", { class: r.reference ? "reference" : "" }, el("td", {}, r.label),
      r.values.map((v) => el("td", { class: v.rank === 1 ? "rank1" : v.rank === 2 ? "rank2" : "" }, v.text))));
    view.replaceChildren(el("h2", {}, "Results"),
      el("p", { class: "note" }, "mean ± std over seeds (seeds in parentheses); best bold, second underlined; click a header to sort."),
      el("table", { id: "results" }, el("thead", {}, head), el("tbody", {}, body)),
      (t.notes || []).map((n) => el("p", { class: "note" }, n)));
  }
  function sortTable(col) {
    const cur = state.sort.table;
    state.sort.table = [col, cur && cur[0] === col ? -cur[1] : (col < 0 ? 1 : -1)];
    tableView();
  }

  // ---------------------------------------------------------------- runs
  function runsView() {
    const rows = R.runs.map((r) => el("tr", {},
      el("td", {}, el("a", { href: "#run/" + r.id }, r.label)), el("td", {}, r.dataset), el("td", {}, r.setting),
      el("td", {}, r.split), el("td", {}, r.seed), el("td", {}, r.protocol),
      el("td", {}, r.has_queries ? el("a", { href: "#queries/" + r.id }, String(r.n_queries)) : "not saved")));
    view.replaceChildren(el("h2", {}, "Runs"), el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["run", "dataset", "setting", "split", "seed", "protocol", "queries"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
  }

  function lineChart(series, xs, title, yMax) {
    const w = 460, h = 220, pad = 34;
    const all = series.flatMap((s) => s.ys.filter((y) => y !== null));
    const lo = Math.min(0, ...all), hi = yMax !== undefined ? yMax : Math.max(1e-9, ...all);
    const xmin = Math.min(...xs), xmax = Math.max(...xs, xmin + 1e-9);
    const X = (x) => pad + (w - 2 * pad) * (x - xmin) / (xmax - xmin), Y = (y) => h - pad - (h - 2 * pad) * (y - lo) / (hi - lo || 1);
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    const colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"];
    series.forEach((s, k) => {
      const pts = s.ys.map((y, i) => (y === null ? null : `${X(xs[i]).toFixed(1)},${Y(y).toFixed(1)}`)).filter(Boolean);
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
      line.setAttribute("stroke", colours[k % colours.length]); line.setAttribute("stroke-width", "2");
      svg.append(line);
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", w - pad - 120); label.setAttribute("y", 14 + 13 * k); label.setAttribute("font-size", "11");
      label.setAttribute("fill", colours[k % colours.length]); label.textContent = s.name;
      svg.append(label);
    });
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", pad); t.setAttribute("y", 14); t.setAttribute("font-size", "12"); t.textContent = `${title} (${fmt(lo, 2)} to ${fmt(hi, 2)})`;
    svg.append(t);
    return svg;
  }

  function runView(i) {
    const r = R.runs[i];
    const metrics = el("table", { id: "run-metrics" }, el("tr", {}, Object.keys(r.metrics).map((m) => el("th", {}, m))),
      el("tr", {}, Object.values(r.metrics).map((v) => el("td", {}, fmt(v)))));
    const parts = [el("h2", {}, runName(r)),
      el("p", { class: "note" }, `protocol ${r.protocol} (ranked by ${r.similarity}); record ${r.record}` +
        (r.selected_on === "test" ? "; model selected on the test set" : "")), metrics];
    if (r.has_queries) parts.push(el("p", {}, el("a", { href: "#queries/" + i }, `every query (${r.n_queries})`)));
    if (r.pr) {
      const xs = r.pr.map((_, k) => k / 100);
      parts.push(el("h3", {}, "Precision-recall"), lineChart([{ name: "interpolated precision", ys: r.pr }], xs, "precision vs recall", 1));
    }
    if (r.history.length) {
      const keys = [...new Set(r.history.flatMap((h) => Object.keys(h)))].filter((k) => !["epoch", "step", "stage_index"].includes(k));
      const xs = r.history.map((h, k) => (h.epoch !== undefined ? h.epoch : k + 1));
      const loss = keys.filter((k) => !k.startsWith("val") && !k.startsWith("test") && k !== "lr");
      const val = keys.filter((k) => k.startsWith("val") || k.startsWith("test:"));
      parts.push(el("h3", {}, "Training curves"),
        el("div", { class: "grid" }, lineChart(loss.slice(0, 6).map((k) => ({ name: k, ys: r.history.map((h) => (h[k] === undefined ? null : h[k])) })), xs, "losses per epoch"),
          val.length ? lineChart(val.slice(0, 6).map((k) => ({ name: k, ys: r.history.map((h) => (h[k] === undefined ? null : h[k])) })), xs, "validation per epoch") : ""));
    }
    if (r.per_class.length) {
      parts.push(el("h3", {}, "Per-class AP"), el("table", { id: "per-class" },
        el("thead", {}, el("tr", {}, el("th", {}, "class"), el("th", {}, "AP"), el("th", {}, ""))),
        el("tbody", {}, r.per_class.map(([name, ap]) => el("tr", {}, el("td", {}, name), el("td", {}, fmt(ap)),
          el("td", {}, el("span", { style: `display:inline-block;background:#4c72b0;height:9px;width:${Math.round(200 * (ap || 0))}px` })))))));
    }
    view.replaceChildren(...parts);
  }

  // ---------------------------------------------------------------- queries of one run
  function primary(data) {
    for (const m of ["AP@all", "Acc@1", "AP@200"]) if (data.metrics.includes(m)) return m;
    return data.metrics[0];
  }
  function className(run, label) { return label >= 0 && run.class_names[label] !== undefined ? run.class_names[label] : String(label); }

  function pager(key, total, render) {
    const pages = Math.max(1, Math.ceil(total / PAGE));
    const page = Math.min(state.page[key] || 0, pages - 1);
    return el("span", { class: "pager" },
      el("button", { id: "prev", onclick: () => { state.page[key] = Math.max(0, page - 1); render(); } }, "previous"),
      ` page ${page + 1} of ${pages} (${total} queries) `,
      el("button", { id: "next", onclick: () => { state.page[key] = Math.min(pages - 1, page + 1); render(); } }, "next"));
  }

  function queriesView(i) {
    loadRun(i).then((data) => {
      const run = R.runs[i];
      const key = "q" + i;
      const metric = state.sort[key] ? state.sort[key][0] : (primary(data) || "class");  // no per-query values saved: by class
      const dir = state.sort[key] ? state.sort[key][1] : 1;
      const needle = (state.filter[key] || "").toLowerCase();
      let idx = data.label.map((_, q) => q);
      if (needle) idx = idx.filter((q) => className(run, data.label[q]).toLowerCase().includes(needle) ||
        String(q) === needle || ((data.qname || {})[q] || "").toLowerCase().includes(needle));
      const val = (q) => (metric === "class" ? className(run, data.label[q]) : data.values[metric][q]);
      idx.sort((a, b) => { const x = val(a), y = val(b); if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : a - b) * dir; });
      const page = Math.min(state.page[key] || 0, Math.max(0, Math.ceil(idx.length / PAGE) - 1));
      const shown = idx.slice(page * PAGE, page * PAGE + PAGE);
      const render = () => queriesView(i);
      const search = el("input", { id: "search", type: "search", placeholder: "class, file name or query number", value: state.filter[key] || "" });
      search.addEventListener("change", () => { state.filter[key] = search.value; state.page[key] = 0; render(); });
      const sortBy = (m) => { const cur = state.sort[key]; state.sort[key] = [m, cur && cur[0] === m ? -cur[1] : 1]; state.page[key] = 0; render(); };
      const head = el("tr", {}, el("th", {}, "query"), el("th", { onclick: () => sortBy("class") }, "class"),
        data.metrics.map((m) => el("th", { onclick: () => sortBy(m) }, m)));
      const rows = shown.map((q) => el("tr", {}, el("td", {}, el("a", { class: "open", href: `#query/${i}/${q}` }, "#" + q)),
        el("td", {}, className(run, data.label[q])), data.metrics.map((m) => el("td", {}, fmt(data.values[m][q])))));
      view.replaceChildren(el("h2", {}, "Queries of " + runName(run)),
        el("div", { class: "controls" }, search, pager(key, idx.length, render),
          el("span", { class: "note" }, `sorted by ${metric} ${dir > 0 ? "ascending" : "descending"}; click a header to sort`)),
        el("table", { id: "query-list" }, el("thead", {}, head), el("tbody", {}, rows)));
    }, fail);
  }

  function topk(run, data, q) {
    const k = data.k;
    const hits = [];
    for (let r = 0; r < k; r++) {
      const g = data.top[q * k + r];
      const ok = data.ok[q * k + r] === 1;
      hits.push(el("div", { class: "hit " + (ok ? "right" : "wrong"), "data-rank": r + 1 },
        image((data.gthumb || {})[g], "photo " + g), el("div", {}, `#${r + 1} ${ok ? "right" : "wrong"}`),
        el("div", {}, className(run, data.gallery_label[g])), el("div", {}, "score " + fmt(data.score[q * k + r]))));
    }
    return el("div", { class: "grid topk" }, hits);
  }

  function queryHead(run, data, q, withMetrics = true) {
    return el("div", { class: "grid" }, el("div", { class: "query-image" }, image((data.qthumb || {})[q], "query " + q)),
      el("div", {}, el("div", {}, el("b", {}, `query #${q}`), " ", (data.qname || {})[q] || ""),
        el("div", {}, "class " + className(run, data.label[q])),
        withMetrics ? el("div", { class: "query-metrics" }, data.metrics.map((m) => `${m} ${fmt(data.values[m][q])}  `)) : ""));
  }

  function queryView(i, q) {
    loadRun(i).then((data) => {
      const run = R.runs[i];
      view.replaceChildren(el("h2", {}, runName(run)), el("p", {}, el("a", { href: "#queries/" + i }, "back to the queries")),
        queryHead(run, data, q), el("h3", {}, `top ${data.k} (green: right, red: wrong)`), topk(run, data, q));
    }, fail);
  }

  // ---------------------------------------------------------------- two runs
  function compareView(a, b) {
    const withQueries = R.runs.filter((r) => r.has_queries && r.comparable.length);
    if (a === undefined || b === undefined) {
      if (!withQueries.length) return view.replaceChildren(el("h2", {}, "Compare two runs"), el("p", {}, "No two runs share a query set with saved embeddings."));
      a = withQueries[0].id; b = withQueries[0].comparable[0];
    }
    const choose = (id, value, options, on) => {
      const s = el("select", { id: id }, options.map((r) => { const o = el("option", { value: r.id }, runName(r)); if (r.id === value) o.selected = true; return o; }));
      s.addEventListener("change", () => on(Number(s.value)));
      return s;
    };
    Promise.all([loadRun(a), loadRun(b)]).then(([da, db]) => {
      const ra = R.runs[a], rb = R.runs[b];
      const metric = primary(da);
      if (!metric || !db.values[metric]) return view.replaceChildren(el("h2", {}, "Compare two runs"),
        el("p", { id: "failure" }, "These runs saved no common per-query metric (per_query.npz): nothing to compare query by query."));
      const key = `c${a}-${b}`;
      const diff = da.values[metric].map((x, q) => (x === null || db.values[metric][q] === null ? null : x - db.values[metric][q]));
      const valid = diff.filter((d) => d !== null);
      const wins = valid.filter((d) => d > 0).length, losses = valid.filter((d) => d < 0).length;
      const perClass = {};
      da.label.forEach((c, q) => { if (diff[q] !== null) { (perClass[c] = perClass[c] || []).push(diff[q]); } });
      const classRows = Object.entries(perClass).map(([c, ds]) => [className(ra, Number(c)), ds.reduce((s, d) => s + d, 0) / ds.length, ds.length])
        .sort((x, y) => y[1] - x[1]);
      const dir = state.sort[key] || -1;
      const needle = (state.filter[key] || "").toLowerCase();
      let idx = diff.map((_, q) => q).filter((q) => diff[q] !== null);
      if (needle) idx = idx.filter((q) => className(ra, da.label[q]).toLowerCase().includes(needle) || String(q) === needle);
      idx.sort((x, y) => (diff[x] - diff[y]) * dir || x - y);
      const page = Math.min(state.page[key] || 0, Math.max(0, Math.ceil(idx.length / PAGE) - 1));
      const render = () => compareView(a, b);
      const search = el("input", { id: "search", type: "search", placeholder: "class or query number", value: state.filter[key] || "" });
      search.addEventListener("change", () => { state.filter[key] = search.value; state.page[key] = 0; render(); });
      const rows = idx.slice(page * PAGE, page * PAGE + PAGE).map((q) => el("tr", {},
        el("td", {}, el("a", { class: "open", href: `#pair/${a}/${b}/${q}` }, "#" + q)), el("td", {}, className(ra, da.label[q])),
        el("td", {}, fmt(da.values[metric][q])), el("td", {}, fmt(db.values[metric][q])),
        el("td", { class: diff[q] > 0 ? "pos" : diff[q] < 0 ? "neg" : "" }, signed(diff[q]))));
      view.replaceChildren(el("h2", {}, "Compare two runs"),
        el("div", { class: "controls" }, "A ", choose("run-a", a, withQueries, (v) => { location.hash = `#compare/${v}/${R.runs[v].comparable[0]}`; }),
          " B ", choose("run-b", b, R.runs.filter((r) => ra.comparable.includes(r.id)), (v) => { location.hash = `#compare/${a}/${v}`; })),
        el("p", { id: "compare-summary" }, `mean ${metric} over the queries both score: A ${fmt(mean(da.values[metric], diff))} vs B ${fmt(mean(db.values[metric], diff))}; ` +
          `per query A is higher on ${wins}, lower on ${losses}, equal on ${valid.length - wins - losses} of ${valid.length}`),
        el("h3", {}, "Per class (mean difference A - B)"),
        el("table", { id: "class-diff" }, el("thead", {}, el("tr", {}, el("th", {}, "class"), el("th", {}, "Δ " + metric), el("th", {}, "queries"))),
          el("tbody", {}, classRows.map(([n, d, c]) => el("tr", {}, el("td", {}, n), el("td", { class: d > 0 ? "pos" : d < 0 ? "neg" : "" }, signed(d)), el("td", {}, c))))),
        el("h3", {}, "Per query"),
        el("div", { class: "controls" }, search, pager(key, idx.length, render),
          el("button", { id: "flip", onclick: () => { state.sort[key] = -dir; state.page[key] = 0; render(); } },
            dir < 0 ? "A's largest wins first (click: B's)" : "B's largest wins first (click: A's)")),
        el("table", { id: "pair-list" }, el("thead", {}, el("tr", {}, ["query", "class", metric + " A", metric + " B", "Δ"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows)));
    }, fail);
  }

  function mean(values, diff) {
    let sum = 0, n = 0;
    values.forEach((v, q) => { if (diff[q] !== null) { sum += v; n += 1; } });
    return n ? sum / n : null;
  }

  function pairView(a, b, q) {
    Promise.all([loadRun(a), loadRun(b)]).then(([da, db]) => {
      const ra = R.runs[a], rb = R.runs[b];
      view.replaceChildren(el("h2", {}, `Query #${q}: two runs`), el("p", {}, el("a", { href: `#compare/${a}/${b}` }, "back to the comparison")),
        queryHead(ra, da, q, false),
        el("div", { class: "pair" }, el("div", { id: "pair-a" }, el("h3", {}, "A: " + runName(ra)), el("div", { class: "query-metrics" }, da.metrics.map((m) => `${m} ${fmt(da.values[m][q])}  `)), topk(ra, da, q)),
          el("div", { id: "pair-b" }, el("h3", {}, "B: " + runName(rb)), el("div", { class: "query-metrics" }, db.metrics.map((m) => `${m} ${fmt(db.values[m][q])}  `)), topk(rb, db, q))));
    }, fail);
  }

  function fail(err) { view.replaceChildren(el("p", { class: "neg", id: "failure" }, String(err.message || err))); }

  function route() {
    const parts = (location.hash || "#table").slice(1).split("/");
    const n = parts.slice(1).map(Number);
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", a.id === "nav-" + parts[0] || (parts[0] === "run" && a.id === "nav-runs"));
    if (parts[0] === "runs") runsView();
    else if (parts[0] === "run") runView(n[0]);
    else if (parts[0] === "queries") queriesView(n[0]);
    else if (parts[0] === "query") queryView(n[0], n[1]);
    else if (parts[0] === "compare") compareView(n[0], n[1]);
    else if (parts[0] === "pair") pairView(n[0], n[1], n[2]);
    else tableView();
  }

  const L = R.limits;
  document.getElementById("bounds").textContent = `Top ${L.top_k} photos per query. Thumbnails (${L.thumb_px} px) for at most ` +
    `${L.thumb_queries} queries per run and their top ${L.top_k}: the lowest- and highest-scoring, a seeded sample, and the ` +
    `largest differences between comparable runs; ${L.thumbnails} written, ${L.unreadable} unreadable (shown as placeholders). ` +
    `Other queries show a placeholder.`;
  window.addEventListener("hashchange", route);
  route();
})();
