//! `--report FILE.html`: the run's report as one self-contained page — the table the run
//! prints, beside charts of throughput, acknowledged and refused donations, and latency
//! percentiles per second. Scripts and styles are inlined (the chart library is the one the
//! server's pages embed), so the file opens anywhere with no network.

use maud::{DOCTYPE, PreEscaped, html};
use tally_web::assets::{CHARTS_JS, TALLY_CSS, UPLOT_CSS, UPLOT_JS};
use tally_web::layout::json_data;

use crate::report::Report;

/// Draws the three charts from the embedded per-second series.
const REPORT_JS: &str = include_str!("../assets/report.js");

const REPORT_CSS: &str = "main { max-width: 84rem; } .report { display: grid; \
    grid-template-columns: repeat(auto-fit, minmax(26rem, 1fr)); gap: 0 1.5rem; } \
    pre.table { background: #fff; border: 1px solid var(--line); border-radius: .5rem; \
    padding: .8rem; overflow-x: auto; font-size: .75rem; }";

/// The page of `report`.
pub fn render(report: &Report) -> std::io::Result<String> {
    let mut table = Vec::new();
    report.write_table(&mut table)?;
    let table = String::from_utf8_lossy(&table).into_owned();
    let per_second = serde_json::to_value(&report.per_second).unwrap_or_default();
    let verdict = match &report.verification {
        None => "not verified".to_owned(),
        Some(v) if v.passed => format!("verified: {} checks, 0 mismatches", v.checks),
        Some(v) => format!("FAILED verification: {} mismatches", v.mismatches.len()),
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "tally-loadgen report" }
                style { (PreEscaped(TALLY_CSS)) (PreEscaped(UPLOT_CSS)) (PreEscaped(REPORT_CSS)) }
            }
            body {
                header.site { span.brand { "tally-loadgen" } span { (verdict) } }
                main {
                    h1 { "Load generator report" }
                    p.note id="summary" {
                        (format!("{:.0}", report.achieved_donations_per_s)) " donations/s acknowledged, "
                        (format!("{:.0}", report.achieved_requests_per_s)) " requests/s answered over "
                        (format!("{:.1}", report.elapsed_s)) " s; latency p99 "
                        (format!("{:.2}", report.latency.p99_ms)) " ms"
                    }
                    div.report {
                        section {
                            h2 { "Throughput, per second" } div.chart id="chart-throughput" {}
                            h2 { "Acknowledged and refused donations, per second" } div.chart id="chart-outcomes" {}
                            h2 { "Latency from due time, per second" } div.chart id="chart-latency" {}
                        }
                        section { h2 { "The run's table" } pre.table id="table" { (table) } }
                    }
                }
                (json_data("per-second", &per_second))
                script { (PreEscaped(UPLOT_JS)) }
                script { (PreEscaped(CHARTS_JS)) }
                script { (PreEscaped(REPORT_JS)) }
            }
        }
    };
    Ok(markup.into_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::report::{ReportContext, RunStats};

    #[test]
    fn the_page_holds_the_table_and_the_series_and_loads_nothing() {
        let mut stats = RunStats::new();
        stats.answered(0, Duration::from_millis(3), 1);
        stats.answered(1, Duration::from_millis(5), 1);
        stats.refused(1, 429, "rate_limited", 1);
        let mut settings = BTreeMap::new();
        settings.insert(
            "target".to_owned(),
            "http://127.0.0.1:1/</script>".to_owned(),
        );
        let report = stats.report(ReportContext {
            elapsed: Duration::from_secs(2),
            scheduled: Duration::from_secs(2),
            distinct_recorded: 2,
            settings,
        });
        let page = render(&report).unwrap();
        assert!(page.contains("tally-loadgen report"));
        assert!(
            page.contains(r#""donations_acknowledged":1"#),
            "{page:.2000}"
        );
        // A setting's text cannot end a script or make markup.
        assert!(page.contains("http://127.0.0.1:1/&lt;/script&gt;"));
        assert!(!page.contains(" src=") && !page.contains(" href="));
    }
}
