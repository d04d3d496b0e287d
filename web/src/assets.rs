//! The files pages load, compiled into the binary.
//!
//! | asset | why it is there | size |
//! |---|---|---|
//! | `uplot-1.6.32.min.js`, `.css` | the charts: uPlot (MIT, `assets/vendor/uplot-1.6.32/LICENSE`), a canvas time-series library small enough for a phone | 51 KB, 2 KB |
//! | `tally.css` | the pages' layout, readable from a phone's width up | a few KB |
//! | `campaign.js` | the campaign page's live total (SSE) and its two charts | a few KB |
//! | `ops.js` | the operator's view: refreshes its tables and draws its rate charts | a few KB |
//! | `charts.js` | what the two pages' charts share | 1 KB |

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// Vendored files are named by version and never change under one name.
    pub immutable: bool,
}

pub const UPLOT_VERSION: &str = "1.6.32";
pub const UPLOT_JS: &str = include_str!("../assets/vendor/uplot-1.6.32/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot-1.6.32/uPlot.min.css");
pub const TALLY_CSS: &str = include_str!("../assets/tally.css");
pub const CHARTS_JS: &str = include_str!("../assets/charts.js");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every asset served under `/assets/`.
pub const ASSETS: [Asset; 6] = [
    Asset {
        name: "uplot-1.6.32.min.js",
        content_type: JS,
        body: UPLOT_JS,
        immutable: true,
    },
    Asset {
        name: "uplot-1.6.32.min.css",
        content_type: CSS,
        body: UPLOT_CSS,
        immutable: true,
    },
    Asset {
        name: "tally.css",
        content_type: CSS,
        body: TALLY_CSS,
        immutable: false,
    },
    Asset {
        name: "charts.js",
        content_type: JS,
        body: CHARTS_JS,
        immutable: false,
    },
    Asset {
        name: "campaign.js",
        content_type: JS,
        body: include_str!("../assets/campaign.js"),
        immutable: false,
    },
    Asset {
        name: "ops.js",
        content_type: JS,
        body: include_str!("../assets/ops.js"),
        immutable: false,
    },
];

/// The asset called `name`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_chart_library_is_the_version_its_name_says() {
        assert!(UPLOT_JS.starts_with(&format!(
            "/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */"
        )));
        assert!(find(&format!("uplot-{UPLOT_VERSION}.min.js")).is_some());
    }

    #[test]
    fn assets_are_found_by_name_only() {
        assert_eq!(find("tally.css").map(|a| a.content_type), Some(CSS));
        assert!(find("../Cargo.toml").is_none());
        assert!(find("").is_none());
    }
}
