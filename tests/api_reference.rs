//! Guards `docs/api.md` against the code: every route in the router has a `### METHOD /path`
//! section and every such section is a route; every error code the server answers with is
//! documented, and every code in the documented error table exists.
//!
//! The sources are read as text with simple string matching, not compiled: the router is a few
//! chained `.route("PATH", method(handler))` calls, and error codes are string literals passed
//! to `ApiError` constructors.

use std::collections::BTreeSet;
use std::path::Path;

/// The files whose routers `tally serve` merges.
const ROUTER_SOURCES: [&str; 6] = [
    "src/server/mod.rs",
    "src/server/admin.rs",
    "ingest/src/routes.rs",
    "ingest/src/refunds.rs",
    "query/src/routes.rs",
    "web/src/pages/mod.rs",
];
/// The directories of the HTTP code: a router elsewhere in them would be missed above.
/// (Searched with their subdirectories.)
const HTTP_SOURCE_DIRS: [&str; 5] = [
    "src/server",
    "api/src",
    "ingest/src",
    "query/src",
    "web/src",
];
/// `axum::routing` functions that route one method.
const METHOD_ROUTERS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const API_DOC: &str = "docs/api.md";

type Route = (String, String);

#[test]
fn every_route_has_a_section_in_the_api_reference_and_every_section_is_a_route() {
    let mut routed = BTreeSet::new();
    for file in ROUTER_SOURCES {
        let routes = routes_in(&code_only(&read(file)));
        assert!(!routes.is_empty(), "no `.route(` found in {file}");
        routed.extend(routes);
    }
    assert!(
        routed.contains(&route("POST", "/v1/donations")),
        "{routed:?}"
    );
    for file in http_sources() {
        let relative = file.strip_prefix(manifest_dir()).unwrap().to_string_lossy();
        let source = code_only(&read(&relative));
        if !ROUTER_SOURCES.contains(&&*relative) {
            assert!(
                !source.contains(".route("),
                "{relative} routes: add it to ROUTER_SOURCES"
            );
        }
        assert!(
            !source.contains(".nest("),
            "{relative} nests a router: teach this test"
        );
    }

    let documented = documented_routes(&read(API_DOC));
    let undocumented: Vec<&Route> = routed.difference(&documented).collect();
    let not_routed: Vec<&Route> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && not_routed.is_empty(),
        "{API_DOC} and the router differ\n  \
         routes without a `### METHOD /path` section: {undocumented:?}\n  \
         sections that are no route: {not_routed:?}"
    );
}

#[test]
fn every_error_code_is_in_the_api_reference_and_every_documented_code_exists() {
    let mut codes = BTreeSet::new();
    for file in http_sources() {
        codes.extend(api_error_codes(&code_only(
            &std::fs::read_to_string(&file).unwrap(),
        )));
    }
    codes.extend(literals_in_function(
        &read("api/src/signature.rs"),
        "pub fn code(",
    ));
    codes.extend(literals_in_function(
        &read("pipeline/src/event/validate.rs"),
        "pub fn as_str(",
    ));
    for expected in [
        "signature_mismatch",
        "invalid_body",
        "rate_limited",
        "not_found",
    ] {
        assert!(
            codes.contains(expected),
            "the scan missed {expected}: {codes:?}"
        );
    }

    let doc = read(API_DOC);
    let undocumented: Vec<&String> = codes
        .iter()
        .filter(|code| !doc.contains(&format!("`{code}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "codes missing from {API_DOC}: {undocumented:?}"
    );
    let tabled = documented_error_codes(&doc);
    assert!(
        !tabled.is_empty(),
        "no error table (`| status | `code` | …`) in {API_DOC}"
    );
    let unknown: Vec<&String> = tabled.difference(&codes).collect();
    assert!(
        unknown.is_empty(),
        "{API_DOC} lists codes the server never answers: {unknown:?}"
    );
}

#[test]
fn the_route_scan_reads_chained_routes_and_method_routers() {
    let source = r#"
        Router::new()
            .route("/a", get(list).post(create))
            .route(
                "/a/{id}",
                axum::routing::delete(remove).with_state(Arc::clone(&state)),
            )
            // .route("/commented", get(x))
            .route("/b", post(|body: String| async move { format!("(get({body}") }))
    "#;
    let expected = [
        route("GET", "/a"),
        route("POST", "/a"),
        route("DELETE", "/a/{id}"),
        route("POST", "/b"),
    ];
    assert_eq!(routes_in(&code_only(source)), BTreeSet::from(expected));
}

fn route(method: &str, path: &str) -> Route {
    (method.to_owned(), path.to_owned())
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = manifest_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.rs` file in the HTTP source directories (not recursive: they are flat).
fn http_sources() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = HTTP_SOURCE_DIRS
        .iter()
        .map(|dir| manifest_dir().join(dir))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The source without whole-line comments, so that examples in doc comments do not count.
fn code_only(source: &str) -> String {
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// (METHOD, PATH) of every `.route("PATH", method(handler)…)` call.
fn routes_in(source: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(start) = rest.find(".route(") {
        rest = &rest[start + ".route(".len()..];
        let arguments = call_arguments(rest);
        let [path, method_router] = arguments.as_slice() else {
            panic!("a .route( call without two arguments: {arguments:?}");
        };
        let path = string_literal(path)
            .unwrap_or_else(|| panic!("a route path that is not a literal: {path}"));
        let methods = method_routers(method_router);
        assert!(
            !methods.is_empty(),
            "no method routes {path}: {method_router}"
        );
        for method in methods {
            routes.insert(route(&method.to_uppercase(), &path));
        }
    }
    routes
}

/// The methods of a method router such as `get(a).post(b).with_state(s)`: the calls at the
/// top level whose function is one of [`METHOD_ROUTERS`].
fn method_routers(expression: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let mut depth = 0;
    let mut name = String::new();
    let mut chars = expression.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => skip_string(&mut chars),
            '(' => {
                let function = name.rsplit("::").next().unwrap_or_default();
                if depth == 0 && METHOD_ROUTERS.contains(&function) {
                    methods.push(function.to_owned());
                }
                depth += 1;
            }
            ')' => depth -= 1,
            c if c.is_alphanumeric() || c == '_' || c == ':' => {
                name.push(c);
                continue;
            }
            _ => {}
        }
        name.clear();
    }
    methods
}

/// The top-level, comma-separated arguments of a call, from the text just after its `(`.
fn call_arguments(text: &str) -> Vec<String> {
    let mut arguments = vec![String::new()];
    let mut depth = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                arguments.push(String::new());
                continue;
            }
            '"' => {
                let current = arguments.last_mut().unwrap();
                current.push('"');
                let mut escaped = false;
                for inner in chars.by_ref() {
                    current.push(inner);
                    match inner {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                continue;
            }
            _ => {}
        }
        arguments.last_mut().unwrap().push(c);
    }
    arguments
        .into_iter()
        .map(|argument| argument.trim().to_owned())
        .filter(|argument| !argument.is_empty())
        .collect()
}

fn skip_string(chars: &mut std::str::Chars<'_>) {
    let mut escaped = false;
    for c in chars.by_ref() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return,
            _ => escaped = false,
        }
    }
}

/// The content of a plain string literal without escapes, such as `"/v1/donations"`.
fn string_literal(argument: &str) -> Option<String> {
    let inner = argument.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains(['"', '\\'])).then(|| inner.to_owned())
}

/// `### METHOD /path` headings; a heading repeated is a failure.
fn documented_routes(doc: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for heading in doc.lines().filter_map(|line| line.strip_prefix("### ")) {
        let Some((method, path)) = heading.trim().split_once(' ') else {
            continue;
        };
        let is_method = METHOD_ROUTERS.contains(&method.to_lowercase().as_str());
        if is_method && method.chars().all(|c| c.is_ascii_uppercase()) {
            assert!(
                path.starts_with('/') && !path.contains(' '),
                "bad heading: {heading}"
            );
            assert!(
                routes.insert(route(method, path)),
                "repeated heading: {heading}"
            );
        }
    }
    routes
}

/// Codes given as literals to `ApiError` constructors: `ApiError::new(StatusCode::…, "code", …)`
/// (also `Self::new` inside `ApiError`), and `ApiError::unauthorized("code", …)`,
/// `::not_found("code", …)`, `::unprocessable("code", …)`.
fn api_error_codes(source: &str) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let calls = [
        ("ApiError::new(", 1),
        ("Self::new(", 1),
        ("ApiError::unauthorized(", 0),
        ("ApiError::not_found(", 0),
        ("ApiError::unprocessable(", 0),
    ];
    for (call, code_argument) in calls {
        for (start, _) in source.match_indices(call) {
            let arguments = call_arguments(&source[start + call.len()..]);
            let is_status = |argument: &String| argument.contains("StatusCode::");
            if code_argument == 1 && !arguments.first().is_some_and(is_status) {
                continue; // another type's constructor
            }
            if let Some(code) = arguments.get(code_argument).and_then(|a| string_literal(a)) {
                codes.insert(code);
            }
        }
    }
    codes
}

/// String literals in the body of the function that starts with `signature` (up to the first
/// line that closes a block at the function's indentation).
fn literals_in_function(source: &str, signature: &str) -> BTreeSet<String> {
    let start = source
        .find(signature)
        .unwrap_or_else(|| panic!("no {signature}"));
    let indent = source[..start].rsplit('\n').next().unwrap_or_default();
    let end_marker = format!("\n{indent}}}");
    let body = &source[start..];
    let body = &body[..body.find(&end_marker).expect("the function's end")];
    body.split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| !literal.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Codes in the error table: rows `| <status> | `code` | … |`.
fn documented_error_codes(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let status = cells.next()?;
            let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let is_status = status.len() == 3 && status.chars().all(|c| c.is_ascii_digit());
            is_status.then(|| code.to_owned())
        })
        .collect()
}
