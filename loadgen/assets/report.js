// The load generator report's charts, drawn from the per-second series the page embeds.
"use strict";
(function () {
  const seconds = JSON.parse(document.getElementById("per-second").textContent);
  const x = seconds.map((s) => s.second);
  const pick = (field) => seconds.map((s) => s[field]);
  const charts = [
    ["chart-throughput", [
      { label: "requests answered", stroke: "#2f6fd6" },
      { label: "donations acknowledged", stroke: "#0f7b5f" },
    ], "/s", ["requests_completed", "donations_acknowledged"]],
    ["chart-outcomes", [
      { label: "acknowledged", stroke: "#0f7b5f", bars: true },
      { label: "refused", stroke: "#c0262d", bars: true },
    ], "/s", ["donations_acknowledged", "refused"]],
    ["chart-latency", [
      { label: "p50", stroke: "#0f7b5f" },
      { label: "p90", stroke: "#b54708" },
      { label: "p99", stroke: "#c0262d" },
    ], "ms", ["p50_ms", "p90_ms", "p99_ms"]],
  ];
  for (const [id, series, unit, fields] of charts) {
    const chart = window.tallyCharts.make(document.getElementById(id), series, unit,
      { time: false, xLabel: "second of the run" });
    chart.setData([x, ...fields.map(pick)]);
  }
})();
