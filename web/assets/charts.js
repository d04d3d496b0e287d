// What the pages' charts share: a uPlot chart sized to its element, redrawn on resize.
"use strict";
window.tallyCharts = {
  // A chart in `element` with one x series (unix seconds, or with `time: false` plain numbers
  // such as seconds into a run) and the series named in `series` ([{label, stroke, bars}]).
  make(element, series, yLabel, { time = true, xLabel } = {}) {
    const width = () => Math.max(element.clientWidth - 2, 200);
    const height = element.classList.contains("small") ? 140 : 200;
    const options = {
      width: width(), height,
      legend: { show: series.length > 1, live: false },
      cursor: { drag: { x: false, y: false } },
      axes: [{ label: xLabel }, { label: yLabel, size: 64 }],
      scales: { x: { time }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [{}].concat(series.map((s) => ({
        label: s.label, stroke: s.stroke, width: 1.5,
        fill: s.bars ? s.stroke + "55" : undefined,
        paths: s.bars ? uPlot.paths.bars({ size: [0.8, 60] }) : undefined,
        points: { show: false },
      }))),
    };
    const chart = new uPlot(options, [[]].concat(series.map(() => [])), element);
    window.addEventListener("resize", () => chart.setSize({ width: width(), height }));
    return chart;
  },
};
