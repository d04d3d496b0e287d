//! The shell every page shares: the document head, the header with its links, the footer.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// A whole page: `title` in the tab, `body` in the main column, and the scripts it loads
/// after the content (so the server-rendered content paints first).
pub fn page(title: &str, body: Markup, scripts: &[&str]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tally" }
                link rel="stylesheet" href="/assets/tally.css";
                @if !scripts.is_empty() {
                    link rel="stylesheet" href="/assets/uplot-1.6.32.min.css";
                }
            }
            body {
                header.site {
                    a.brand href="/" { "tally" }
                    nav { a href="/" { "Campaigns" } " " a href="/ops" { "Operations" } }
                }
                main { (body) }
                @for script in scripts {
                    script src=(format!("/assets/{script}")) {}
                }
            }
        }
    }
}

/// Embeds `value` as JSON inside a `<script type="application/json">` element: `<` is written
/// as `\u003c`, so no string in it can close the element.
pub fn json_data(id: &str, value: &serde_json::Value) -> Markup {
    let json = value.to_string().replace('<', "\\u003c");
    html! { script type="application/json" id=(id) { (PreEscaped(json)) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_embedded_json_cannot_close_its_script() {
        let name = "<img src=x onerror=alert(1)>";
        let markup = page(name, html! { h1 { (name) } }, &[]).into_string();
        assert!(!markup.contains("<img"), "{markup}");
        assert!(markup.contains("&lt;img src=x onerror=alert(1)&gt;"));
        let data = json_data("d", &serde_json::json!({"name": "</script><img>"})).into_string();
        assert!(!data.contains("</script><img>"), "{data}");
        assert!(data.contains("\\u003c/script>"));
    }
}
