// The campaign page, live: the total, donation count, goal and refund line follow the
// campaign's Server-Sent Events stream (/v1/campaigns/{id}/live); the charts come from /stats
// and are fetched again (at most every 2 s) when the total moves; the campaign itself is read
// every 5 s for how far behind the log the total is, for a close, and (also when refunds
// arrive) for how many of the refunds were chargebacks.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("campaign-data").textContent);
  const api = "/v1/campaigns/" + encodeURIComponent(data.campaign_id);
  const $ = (id) => document.getElementById(id);

  function grouped(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  // The server's format: symbol, grouped whole units, and the currency's minor units.
  function money(minor) {
    const scale = 10 ** data.minor_units;
    const whole = Math.floor(minor / scale);
    const fraction = data.minor_units > 0
      ? "." + String(minor % scale).padStart(data.minor_units, "0") : "";
    return data.symbol + grouped(whole) + fraction;
  }

  // With a no-break space, as the server writes it.
  function counted(n, noun) { return grouped(n) + "\u00a0" + noun + (n === 1 ? "" : "s"); }
  // The server's refund line: `refunds` counts the chargebacks too, which it names apart.
  function refundText() {
    const chargebacks = Math.min(data.chargebacks, data.refunds);
    const kinds = [];
    if (data.refunds > chargebacks) kinds.push(counted(data.refunds - chargebacks, "refund"));
    if (chargebacks > 0) kinds.push(counted(chargebacks, "chargeback"));
    return money(data.gross_cents) + " raised \u00b7 " + money(data.refunded_cents)
      + " refunded (" + kinds.join(", ") + ")";
  }
  // Under the total once there are refunds; the server renders none before the first.
  function showRefunds() {
    let element = $("refunds");
    if (data.refunds === 0) {
      if (element) element.hidden = true;
      return;
    }
    if (!element) {
      element = document.createElement("p");
      element.className = "refunds";
      element.id = "refunds";
      $("total").after(element);
    }
    element.hidden = false;
    element.textContent = refundText();
  }

  let live = false;
  let lastMoveAt = null;
  let lag = null;
  function showTotal(update) {
    $("total").textContent = money(update.total_cents);
    $("donations").textContent = grouped(update.donations);
    $("donations-word").textContent = update.donations === 1 ? "donation" : "donations";
    if (data.goal_cents != null) {
      $("goal-progress").value = Math.min(update.total_cents, data.goal_cents);
      const percent = data.goal_cents === 0 ? 100
        : Math.floor(update.total_cents * 100 / data.goal_cents);
      $("goal-percent").textContent = percent + "%";
    }
  }
  // Live, with how far behind the log the total is (from the campaign's freshness) and when
  // it last moved.
  function showFreshness() {
    if (!live) return;
    const element = $("freshness");
    element.classList.add("live");
    let moved = "no new donation since this page opened";
    if (lastMoveAt !== null) {
      const seconds = Math.max(0, (Date.now() - lastMoveAt) / 1000);
      moved = "last donation counted " + seconds.toFixed(seconds < 10 ? 1 : 0) + " s ago";
    }
    if (lag === null || lag.lag_records === 0) {
      element.textContent = "Live: up to date, " + moved;
    } else {
      element.textContent = "Live: " + grouped(lag.lag_records)
        + " recorded donations not counted yet (" + lag.lag_ms + " ms behind), " + moved;
    }
  }
  async function readFreshness() {
    try {
      const response = await fetch(api);
      if (!response.ok) return;
      const view = await response.json();
      lag = view.freshness;
      // The stream counts refunds and chargebacks together; the campaign tells them apart.
      if (view.refunds === data.refunds && view.chargebacks !== data.chargebacks) {
        data.chargebacks = view.chargebacks;
        showRefunds();
      }
      // A close shows its reconciled final total, which the server renders.
      if (view.status !== data.status && view.status === "closed") location.reload();
    } catch (error) { /* the next read tries again */ }
  }

  const charts = [];
  for (const element of document.querySelectorAll(".chart[data-bucket]")) {
    const chart = window.tallyCharts.make(element,
      [{ label: "donations", stroke: "#0f7b5f", bars: true }], "donations");
    charts.push({ element, chart });
  }
  async function drawCharts() {
    const now = Date.now();
    for (const { element, chart } of charts) {
      const hours = Number(element.dataset.hours);
      const step = element.dataset.bucket === "minute" ? 60e3 : 3600e3;
      const to = new Date(Math.ceil(now / step) * step);
      const from = new Date(to.getTime() - hours * 3600e3);
      const url = api + "/stats?from=" + from.toISOString() + "&to=" + to.toISOString()
        + "&bucket=" + element.dataset.bucket;
      try {
        const response = await fetch(url);
        if (!response.ok) continue;
        const stats = await response.json();
        const points = new Map((stats.series || []).map((p) => [Date.parse(p.start), p.count]));
        const xs = [], ys = [];
        for (let t = from.getTime(); t < to.getTime(); t += step) {
          xs.push(t / 1000);
          ys.push(points.get(t) || 0);
        }
        chart.setData([xs, ys]);
      } catch (error) { /* the next update tries again */ }
    }
  }
  let chartsDue = null;
  function chartsSoon() {
    if (chartsDue !== null) return;
    chartsDue = setTimeout(() => { chartsDue = null; drawCharts(); }, 2000);
  }

  drawCharts();
  setInterval(showFreshness, 500);
  setInterval(readFreshness, 5000);
  if (data.status !== "closed" && "EventSource" in window) {
    const stream = new EventSource(api + "/live");
    stream.addEventListener("total", (event) => {
      const update = JSON.parse(event.data);
      const donated = update.donations !== data.donations;
      const moved = update.total_cents !== data.total_cents || donated;
      const refunded = update.refunds !== undefined && update.refunds !== data.refunds;
      data.total_cents = update.total_cents;
      data.donations = update.donations;
      if (update.refunds !== undefined) {
        data.gross_cents = update.gross_cents;
        data.refunded_cents = update.refunded_cents;
        data.refunds = update.refunds;
      }
      live = true;
      if (donated) lastMoveAt = Date.now();
      showTotal(update);
      showRefunds();
      // Which of the new refunds were chargebacks, the campaign itself says.
      if (refunded) readFreshness();
      showFreshness();
      if (moved) chartsSoon();
    });
    // EventSource reconnects by itself; until it does, the page says the total may be behind.
    stream.addEventListener("error", () => {
      live = false;
      const element = $("freshness");
      element.classList.remove("live");
      element.textContent = "Reconnecting to the live total; the figure above may be behind.";
    });
  }
})();
