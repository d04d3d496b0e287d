//! # tally-web
//!
//! The pages people look at, beside the JSON API: a campaign's page with its running total,
//! the list of campaigns, and the operator's view of partitions, lag and request rates.
//!
//! Pages are rendered on the server first (a total is right with JavaScript off); their
//! scripts then follow the live total over Server-Sent Events and draw the charts. Every asset
//! is compiled into the binary, so a page needs nothing from the network.
//!
//! - [`money`]: amounts in a currency's minor units, as people read them.
//! - [`assets`]: the embedded scripts, styles and the vendored chart library.
//! - [`layout`]: the page shell every page shares.
//! - `pages` (feature `server`): the routes `GET /`, `/campaigns/{id}`, `/ops`, `/assets/…`.

pub mod assets;
pub mod layout;
pub mod money;
#[cfg(feature = "server")]
pub mod pages;
