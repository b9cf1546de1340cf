// Draws the page's Chart.js charts from its JSON block; the Firm page refreshes its intraday chart.
(function () {
  "use strict";
  const specs = JSON.parse(document.getElementById("chart-data").textContent);
  const charts = {};
  for (const spec of specs) {
    const canvas = document.getElementById(spec.id);
    if (canvas) charts[spec.id] = new Chart(canvas, spec.config);
  }
  window.cockpitCharts = charts;
  document.body.dataset.chartsRendered = String(Object.keys(charts).length);

  for (const select of document.querySelectorAll("select[data-nav]")) {
    select.addEventListener("change", () => {
      location.href = select.dataset.nav + encodeURIComponent(select.value) + "?as_of=" + select.dataset.asOf;
    });
  }

  // one intraday chart per base currency, "chart-intraday-<CCY>": each takes its currency's rows
  const url = document.body.dataset.refreshUrl;
  const intraday = specs.filter((s) => s.refresh === "intraday" && charts[s.id]);
  if (url && intraday.length) {
    setInterval(async () => {
      const r = await fetch(url, {credentials: "same-origin"});
      if (!r.ok) return;
      const all = (await r.json()).intraday.rows || [];
      for (const spec of intraday) {
        const chart = charts[spec.id];
        const rows = all.filter((x) => "chart-intraday-" + x.currency === spec.id);
        chart.data.labels = rows.map((x) => String(x.bucket_start).slice(11, 16));
        chart.data.datasets[0].data = rows.map((x) => x.intraday_pnl);
        chart.data.datasets[1].data = rows.map((x) => x.gross_exposure);
        chart.update();
      }
      document.body.dataset.refreshedAt = new Date().toISOString();
    }, 1000 * Number(document.body.dataset.refreshS || 300));
  }
})();
