// The operator's view, live: /v1/ops every second refreshes the tables, and the differences
// of its counters between two reads are the per-second rates the charts draw (last 5 min).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const grouped = (n) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const text = (value) => document.createTextNode(String(value));
  const KEEP = 300;

  const charts = {
    ingest: window.tallyCharts.make($("chart-ingest"), [
      { label: "appended", stroke: "#0f7b5f" },
      { label: "recorded", stroke: "#2f6fd6" },
    ], "/s"),
    responses: window.tallyCharts.make($("chart-responses"), [
      { label: "2xx", stroke: "#0f7b5f" },
      { label: "4xx", stroke: "#b54708" },
      { label: "5xx", stroke: "#c0262d" },
      { label: "429", stroke: "#8e44ad" },
    ], "/s"),
    resends: window.tallyCharts.make($("chart-resends"), [
      { label: "duplicates", stroke: "#2f6fd6" },
      { label: "conflicts", stroke: "#c0262d" },
    ], "/s"),
  };
  const series = { x: [], ingest: [[], []], responses: [[], [], [], []], resends: [[], []] };
  const fields = {
    ingest: ["appended_records", "recorded"],
    responses: ["responses_2xx", "responses_4xx", "responses_5xx", "rate_limited"],
    resends: ["duplicates", "conflicts"],
  };

  function cell(content, numeric) {
    const td = document.createElement("td");
    if (numeric) td.className = "num";
    td.appendChild(typeof content === "object" ? content : text(content));
    return td;
  }
  function code(value) { const c = document.createElement("code"); c.textContent = value; return c; }

  function showPartitions(view) {
    const rows = view.partitions.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.partition = p.partition;
      if (p.lag_records > 0) tr.className = "behind";
      tr.append(cell(p.partition, true), cell(grouped(p.log_end_offset), true),
        cell(grouped(p.applied_offset), true), cell(grouped(p.lag_records), true),
        cell(p.lag_ms, true),
        cell(p.checkpoint_age_s == null ? "—" : p.checkpoint_age_s.toFixed(1) + " s", true),
        cell(p.owner == null ? "nobody" : code(p.owner)));
      return tr;
    });
    $("partition-rows").replaceChildren(...rows);
    const nodes = view.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.append(cell(code(n.node_id)), cell(n.advertise),
        cell(n.partitions.length ? n.partitions.join(", ") : "none"),
        cell(n.last_heard_ms_ago + " ms ago", true));
      return tr;
    });
    $("node-rows").replaceChildren(...nodes);
    $("ops-at").textContent = view.at;
    $("ops-at").dateTime = view.at;
  }

  let previous = JSON.parse($("ops-data").textContent);
  let previousAt = Date.parse(previous.at);
  async function refresh() {
    let view;
    try {
      const response = await fetch("/v1/ops");
      if (!response.ok) return;
      view = await response.json();
    } catch (error) { return; }
    showPartitions(view);
    const at = Date.parse(view.at);
    const seconds = Math.max((at - previousAt) / 1000, 0.001);
    series.x.push(at / 1000);
    for (const chart of Object.keys(fields)) {
      fields[chart].forEach((field, i) => {
        const rate = Math.max(0, view.counters[field] - previous.counters[field]) / seconds;
        series[chart][i].push(rate);
      });
    }
    if (series.x.length > KEEP) {
      series.x.shift();
      for (const chart of Object.keys(fields)) series[chart].forEach((s) => s.shift());
    }
    for (const chart of Object.keys(fields)) charts[chart].setData([series.x, ...series[chart]]);
    previous = view;
    previousAt = at;
  }
  setInterval(refresh, 1000);
})();
