/* The dashboard's behaviour: read the embedded JSON, filter by topic and date range, build the views.
   Every value from the data goes into the page through textContent or setAttribute (never innerHTML),
   and only http(s) URLs become links. */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("dashboard-data").textContent);
  var SETS = DATA.datasets || {};
  var KNOWN = ["developments", "topic_volume", "stories", "source_health"];
  var KIND_LABEL = {new_story: "new story", update: "update", surge: "surge"};
  var PROBLEM = {failing: "failing", silent: "silent", slow: "slow"};
  var HTTP_URL = /^https?:\/\/[^\s\/?#\\]+\S*$/i;

  function rows(name) { return (SETS[name] && SETS[name].rows) || []; }

  function safeHref(url) {
    if (typeof url !== "string" || !HTTP_URL.test(url)) { return null; }
    try {
      var u = new URL(url);
      return (u.protocol === "http:" || u.protocol === "https:") ? url : null;
    } catch (e) { return null; }
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function link(url, text, cls) {
    var label = (text === null || text === undefined || text === "") ? (url || "") : text;
    var href = safeHref(url);
    if (!href) { return el("span", cls, label); }
    var a = el("a", cls, label);
    a.setAttribute("href", href);
    a.setAttribute("rel", "noopener noreferrer");
    a.setAttribute("target", "_blank");
    return a;
  }

  /* Plotly reads labels as a small HTML subset: hand it entities so a value stays text. */
  function plotlyText(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function day(ts) { return typeof ts === "string" ? ts.slice(0, 10) : ""; }
  function when(ts) { return typeof ts === "string" ? ts.slice(0, 16).replace("T", " ") : ""; }
  function inRange(d, f) { return !!d && (!f.from || d >= f.from) && (!f.to || d <= f.to); }
  function fmt(v) {
    if (v === null || v === undefined) { return ""; }
    if (Array.isArray(v)) { return v.join(", "); }
    if (typeof v === "object") { return JSON.stringify(v); }
    return String(v);
  }

  /* ---- filters ------------------------------------------------------------------------------ */

  var fTopic = document.getElementById("f-topic");
  var fFrom = document.getElementById("f-from");
  var fTo = document.getElementById("f-to");
  var bounds = DATA.bounds || {};

  (DATA.topics || []).forEach(function (t) {
    var o = el("option", null, t);
    o.value = t;
    fTopic.appendChild(o);
  });
  [fFrom, fTo].forEach(function (i) {
    if (bounds.min) { i.min = bounds.min; }
    if (bounds.max) { i.max = bounds.max; }
  });

  function setFilters(f) {
    fTopic.value = (DATA.topics || []).indexOf(f.topic) >= 0 ? f.topic : "";
    fFrom.value = f.from || "";
    fTo.value = f.to || "";
  }

  function current() { return {topic: fTopic.value, from: fFrom.value, to: fTo.value}; }

  function fromHash() {
    var f = {topic: "", from: bounds.default_from || "", to: bounds.max || ""};
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    ["topic", "from", "to"].forEach(function (k) {
      var v = params.get(k);
      if (v !== null && (k === "topic" || /^\d{4}-\d{2}-\d{2}$/.test(v) || v === "")) { f[k] = v; }
    });
    return f;
  }

  function toHash(f) {
    var p = new URLSearchParams();
    if (f.topic) { p.set("topic", f.topic); }
    p.set("from", f.from);
    p.set("to", f.to);
    history.replaceState(null, "", "#" + p.toString());
  }

  /* ---- views -------------------------------------------------------------------------------- */

  function card(label, n, alert) {
    var c = el("div", "card" + (alert ? " alert" : ""));
    c.appendChild(el("div", "n", n));
    c.appendChild(el("div", "l", label));
    return c;
  }

  function developmentsIn(f) {
    return rows("developments").filter(function (r) {
      return (!f.topic || r.topic === f.topic) && inRange(day(r.first_seen), f);
    });
  }

  function storiesIn(f) {
    return rows("stories").filter(function (s) {
      var topics = s.topics || [];
      var overlaps = (!f.to || day(s.first_seen) <= f.to) && (!f.from || day(s.last_seen) >= f.from);
      return (!f.topic || topics.indexOf(f.topic) >= 0) && overlaps;
    });
  }

  function volumeIn(f) {
    return rows("topic_volume").filter(function (r) {
      return (f.topic ? r.topic === f.topic : r.topic === null) && inRange(r.day, f);
    });
  }

  function renderSummary(f) {
    var box = clear(document.getElementById("summary"));
    var devs = developmentsIn(f);
    var articles = volumeIn(f).reduce(function (n, r) { return n + (r.articles || 0); }, 0);
    var problems = rows("source_health").filter(function (r) { return (r.problems || []).length; });
    box.appendChild(card("developments", devs.length));
    box.appendChild(card("new stories", devs.filter(function (d) { return d.kind === "new_story"; }).length));
    box.appendChild(card("updates", devs.filter(function (d) { return d.kind === "update"; }).length));
    box.appendChild(card("stories active", storiesIn(f).length));
    box.appendChild(card("tagged articles", articles));
    box.appendChild(card("sources needing attention", problems.length, problems.length > 0));
  }

  function renderDevelopment(d) {
    var li = el("li", "dev");
    li.setAttribute("data-kind", d.kind || "");
    var head = el("div", "when");
    head.appendChild(el("span", "badge " + (KIND_LABEL[d.kind] ? d.kind : ""), KIND_LABEL[d.kind] || d.kind));
    head.appendChild(el("time", null, when(d.first_seen)));
    li.appendChild(head);
    li.appendChild(link(d.url, d.title || "(untitled)", "title"));
    var meta = el("div", "meta");
    meta.appendChild(el("span", "outlet", d.outlet || "unknown outlet"));
    meta.appendChild(document.createTextNode(" · "));
    meta.appendChild(el("span", "lang", d.lang || "?"));
    if (d.story_title && d.story_title !== d.title) {
      meta.appendChild(document.createTextNode(" · story: "));
      meta.appendChild(el("span", "story", d.story_title));
    }
    li.appendChild(meta);
    var names = d.new_names || [], numbers = d.new_numbers || [];
    if (names.length || numbers.length) {
      var chips = el("div", "chips");
      chips.appendChild(el("span", "what", d.kind === "update" ? "What is new: " : "Key facts: "));
      names.forEach(function (n) { chips.appendChild(el("span", "chip", n)); });
      numbers.forEach(function (n) { chips.appendChild(el("span", "chip num", n)); });
      li.appendChild(chips);
    }
    return li;
  }

  function renderDevelopments(f) {
    var box = clear(document.getElementById("developments-body"));
    var byTopic = {}, order = [];
    developmentsIn(f).forEach(function (d) {
      var t = d.topic || "(no topic)";
      if (!byTopic[t]) { byTopic[t] = []; order.push(t); }
      byTopic[t].push(d);
    });
    if (!order.length) { box.appendChild(el("p", "empty", "No developments in this period.")); return; }
    order.forEach(function (t) {
      var sec = el("section", "topic");
      sec.setAttribute("data-topic", t);
      var h = el("h3", null, t + " ");
      h.appendChild(el("span", "count", "(" + byTopic[t].length + ")"));
      sec.appendChild(h);
      var ol = el("ol", "timeline");
      byTopic[t].forEach(function (d) { ol.appendChild(renderDevelopment(d)); });
      sec.appendChild(ol);
      box.appendChild(sec);
    });
  }

  function renderVolume(f) {
    var chart = document.getElementById("volume-chart");
    var empty = document.getElementById("volume-empty");
    var data = volumeIn(f);
    empty.hidden = data.length > 0;
    if (!window.Plotly) { empty.hidden = false; empty.textContent = "The charting library did not load."; return; }
    if (!data.length) { Plotly.purge(chart); chart.hidden = true; return; }
    chart.hidden = false;
    var perLang = {}, totals = {};
    data.forEach(function (r) {
      var l = r.lang || "?";
      perLang[l] = perLang[l] || {};
      perLang[l][r.day] = (perLang[l][r.day] || 0) + r.articles;
      totals[l] = (totals[l] || 0) + r.articles;
    });
    var langs = Object.keys(perLang).sort(function (a, b) { return totals[b] - totals[a] || (a < b ? -1 : 1); });
    var traces = langs.map(function (l) {
      var days = Object.keys(perLang[l]).sort();
      return {type: "bar", name: plotlyText(l), x: days, y: days.map(function (d) { return perLang[l][d]; }),
              hovertemplate: "%{x|%Y-%m-%d}: %{y} articles"};
    });
    var perDay = {};
    data.forEach(function (r) { perDay[r.day] = (perDay[r.day] || 0) + r.articles; });
    var peak = Math.max.apply(null, Object.keys(perDay).map(function (d) { return perDay[d]; }));
    var xaxis = {type: "date", tickformat: "%b %d"};
    if (Object.keys(perDay).length <= 14) { xaxis.dtick = 86400000; }
    var yaxis = {title: {text: "articles"}, rangemode: "tozero", tickformat: ",d"};
    if (peak <= 10) { yaxis.dtick = 1; }
    var layout = {barmode: "stack", height: 320, margin: {l: 40, r: 10, t: 10, b: 40},
                  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", xaxis: xaxis, yaxis: yaxis,
                  legend: {title: {text: "language"}, orientation: "h", y: -0.18, traceorder: "normal"},
                  font: {family: "system-ui, sans-serif", size: 12}};
    Plotly.react(chart, traces, layout, {displaylogo: false, responsive: true,
                                         modeBarButtonsToRemove: ["select2d", "lasso2d"]});
  }

  function table(columns, records, rowClass) {
    var t = el("table"), thead = el("thead"), tr = el("tr"), tbody = el("tbody");
    columns.forEach(function (c) { tr.appendChild(el("th", c.cls || null, c.label)); });
    thead.appendChild(tr);
    t.appendChild(thead);
    records.forEach(function (r) {
      var row = el("tr", rowClass ? rowClass(r) : null);
      columns.forEach(function (c) {
        var td = el("td", c.cls || null);
        var v = c.render ? c.render(r) : fmt(r[c.key]);
        if (v instanceof Node) { td.appendChild(v); } else { td.textContent = v; }
        row.appendChild(td);
      });
      tbody.appendChild(row);
    });
    t.appendChild(tbody);
    return t;
  }

  function langs(list) {
    var span = el("span");
    (list || []).forEach(function (l) { span.appendChild(el("span", "lang", l)); });
    return span;
  }

  function renderStories(f) {
    var box = clear(document.getElementById("stories-body"));
    var list = storiesIn(f);
    if (!list.length) { box.appendChild(el("p", "empty", "No stories in this period.")); return; }
    box.appendChild(table([
      {label: "Story", render: function (s) { return link(s.url, s.title || s.story_id); }},
      {label: "Topics", key: "topics"},
      {label: "Sources", key: "sources", cls: "num"},
      {label: "Languages", render: function (s) { return langs(s.languages); }},
      {label: "Articles", key: "articles", cls: "num"},
      {label: "First seen", cls: "time", render: function (s) { return when(s.first_seen); }},
      {label: "Last seen", cls: "time", render: function (s) { return when(s.last_seen); }},
      {label: "Updates", cls: "num", render: function (s) {
        return s.updates ? el("span", "badge update", s.updates) : "0";
      }}
    ], list, function () { return "story"; }));
  }

  function renderHealth() {
    var box = clear(document.getElementById("source_health-body"));
    var list = rows("source_health");
    if (!list.length) { box.appendChild(el("p", "empty", "No sources polled yet.")); return; }
    box.appendChild(table([
      {label: "Source", render: function (r) { return link(r.url, r.name || r.id); }},
      {label: "Status", render: function (r) {
        var span = el("span"), p = r.problems || [];
        if (!p.length) { p = r.polls ? ["ok"] : ["not polled yet"]; }
        p.forEach(function (x) { span.appendChild(el("span", "badge " + (PROBLEM[x] || "ok"), x)); });
        return span;
      }},
      {label: "Last success", cls: "time", render: function (r) { return when(r.last_success); }},
      {label: "Last new article", cls: "time", render: function (r) { return when(r.last_new_article); }},
      {label: "Failures", key: "consecutive_failures", cls: "num"},
      {label: "Avg latency ms", key: "avg_latency_ms", cls: "num"},
      {label: "Not modified", cls: "num", render: function (r) {
        return r.not_modified_ratio === null ? "" : Math.round(r.not_modified_ratio * 100) + "%";
      }},
      {label: "Last error", key: "last_error", cls: "err"}
    ], list, function (r) { return "source" + ((r.problems || []).length ? " problem" : ""); }));
  }

  /* Any extra query file in dashboards/ shows as a plain table (not filtered). */
  function renderExtra() {
    var box = clear(document.getElementById("extra"));
    Object.keys(SETS).sort().forEach(function (name) {
      if (KNOWN.indexOf(name) >= 0) { return; }
      var ds = SETS[name], sec = el("section", "panel");
      sec.id = "extra-" + name;
      sec.appendChild(el("h2", null, ds.title || name));
      var cols = (ds.columns || []).map(function (c) {
        if (c === "url" || /_url$/.test(c)) {
          return {label: c, render: function (r) { return link(r[c], r[c]); }};
        }
        return {label: c, key: c};
      });
      sec.appendChild(ds.rows.length ? table(cols, ds.rows) : el("p", "empty", "Nothing yet."));
      box.appendChild(sec);
    });
  }

  function render() {
    var f = current();
    if (f.from && f.to && f.from > f.to) { var x = f.from; f.from = f.to; f.to = x; setFilters(f); }
    toHash(f);
    document.getElementById("f-summary").textContent =
      (f.topic || "all topics") + ", " + (f.from || "start") + " to " + (f.to || "end");
    renderSummary(f);
    renderDevelopments(f);
    renderVolume(f);
    renderStories(f);
  }

  setFilters(fromHash());
  [fTopic, fFrom, fTo].forEach(function (i) { i.addEventListener("change", render); });
  document.getElementById("f-all").addEventListener("click", function () {
    setFilters({topic: fTopic.value, from: bounds.min || "", to: bounds.max || ""});
    render();
  });
  document.getElementById("f-reset").addEventListener("click", function () {
    setFilters({topic: "", from: bounds.default_from || "", to: bounds.max || ""});
    render();
  });
  window.addEventListener("hashchange", function () { setFilters(fromHash()); render(); });
  renderHealth();
  renderExtra();
  render();
}());
