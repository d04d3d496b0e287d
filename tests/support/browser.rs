//! A real headless Chromium, driven over WebDriver by a chromedriver this module starts on a
//! free loopback port; both stop when the [`Browser`] is dropped.
//!
//! `TALLY_CHROMEDRIVER` and `TALLY_CHROMIUM` name the programs (default: `chromedriver` and
//! `/usr/bin/chromium`, Debian's packages `chromium-driver` and `chromium`, which `.ci/run`
//! installs).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// A chromedriver that has not answered by then has failed to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for something on a page to appear or change.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A phone-sized window: the pages must work there.
pub const PHONE: (u32, u32) = (412, 915);

/// One browser session and the chromedriver behind it.
pub struct Browser {
    pub runtime: tokio::runtime::Runtime,
    pub client: Option<Client>,
    driver: Child,
}

impl Browser {
    /// A headless browser with a window of `size`, with JavaScript on or off.
    pub fn start(javascript: bool, size: (u32, u32)) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let port = free_port();
        let driver_program =
            std::env::var("TALLY_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let driver = Command::new(&driver_program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {driver_program} ({error}): the page tests need Debian's \
                     chromium and chromium-driver (`apt-get install chromium chromium-driver`, \
                     as .ci/run does)"
                )
            });
        let mut browser = Self {
            runtime,
            client: None,
            driver,
        };
        let url = format!("http://127.0.0.1:{port}");
        let capabilities = capabilities(javascript, size);
        let started = Instant::now();
        let client = loop {
            let attempt = browser.runtime.block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url),
            );
            match attempt {
                Ok(client) => break client,
                Err(error) if started.elapsed() > START_TIMEOUT => {
                    panic!("chromedriver on {url} gave no session: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        browser.client = Some(client);
        browser
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    pub fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// The text of the element with `id`.
    pub fn text_of(&self, id: &str) -> String {
        self.runtime.block_on(async {
            self.client()
                .find(Locator::Id(id))
                .await
                .unwrap_or_else(|error| panic!("no element #{id}: {error}"))
                .text()
                .await
                .unwrap()
        })
    }

    /// Runs `script` in the page and returns what it returns.
    pub fn run(&self, script: &str) -> serde_json::Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap()
    }

    /// Waits until `ready` holds of the text of `#id`; the text then, or a panic naming it.
    pub fn wait_for_text(&self, id: &str, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text_of(id);
            if ready(&text) {
                return text;
            }
            assert!(
                started.elapsed() < PAGE_TIMEOUT,
                "#{id} still shows {text:?} after {PAGE_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Saves a screenshot as `CARGO_TARGET_TMPDIR/pages/{name}.png`, says where, and returns
    /// the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pages");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn capabilities(javascript: bool, (width, height): (u32, u32)) -> fantoccini::wd::Capabilities {
    let binary = std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let mut prefs = serde_json::Map::new();
    if !javascript {
        prefs.insert(
            "profile.managed_default_content_settings.javascript".into(),
            2.into(),
        );
    }
    let options = serde_json::json!({
        "binary": binary,
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            format!("--window-size={width},{height}"),
        ],
        "prefs": prefs,
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    capabilities
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
