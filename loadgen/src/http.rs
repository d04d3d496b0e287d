//! A lean HTTP/1.1 client for one server: keep-alive connections in a pool, requests written
//! in one buffer, answers read with only what the load generator looks at (status,
//! `Retry-After`, body). A general client library costs several times the server's own work per
//! donation; the load generator shares the machine with the server, so this one does as little
//! as it can while still reading every answer whole.
//!
//! It speaks plain `http://` only. Bodies come framed by `Content-Length` or chunked; an answer
//! with neither is read to the end of the connection. A connection the server marked
//! `Connection: close`, or one that failed, is dropped rather than pooled.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// URL with a host")]
    BadUrl(String),
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

/// One request: a method, a path with its query, extra headers and a body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'static str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Self {
            method: "GET",
            path,
            headers: &[],
            body: &[],
        }
    }

    /// A POST of a JSON body with `headers` beside `Content-Type`.
    pub fn post_json(path: &'a str, headers: &'a [(&'a str, &'a str)], body: &'a [u8]) -> Self {
        Self {
            method: "POST",
            path,
            headers,
            body,
        }
    }
}

/// An answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one as a number.
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Keep-alive connections to one server, reused by whoever sends next.
#[derive(Debug)]
pub struct Pool {
    address: String,
    idle: Mutex<Vec<Connection>>,
    idle_max: usize,
}

impl Pool {
    /// A pool for `base` (`http://host:port`, maybe with a trailing `/`) keeping at most
    /// `idle_max` idle connections.
    pub fn new(base: &str, idle_max: usize) -> Result<Self, HttpError> {
        let address = address_of(base)?;
        Ok(Self {
            address,
            idle: Mutex::new(Vec::new()),
            idle_max: idle_max.max(1),
        })
    }

    /// Sends `request` on an idle connection or a new one and reads the answer, all within
    /// `timeout`. A pooled connection the server had closed while it sat idle fails before any
    /// answer arrives; the request then goes once more on a new connection.
    pub async fn send(
        &self,
        request: Request<'_>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.send_untimed(request))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn send_untimed(&self, request: Request<'_>) -> Result<Response, HttpError> {
        if let Some(mut connection) = self.take_idle() {
            match connection.exchange(request).await {
                Ok((response, reusable)) => {
                    self.put_back(connection, reusable);
                    return Ok(response);
                }
                Err(Exchange::NothingRead(_)) => {}
                Err(Exchange::Failed(error)) => return Err(error),
            }
        }
        let mut connection = Connection::open(&self.address).await?;
        match connection.exchange(request).await {
            Ok((response, reusable)) => {
                self.put_back(connection, reusable);
                Ok(response)
            }
            Err(Exchange::NothingRead(error) | Exchange::Failed(error)) => Err(error),
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_back(&self, connection: Connection, reusable: bool) {
        if !reusable {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(connection);
        }
    }
}

/// `host:port` of an `http://` base URL.
fn address_of(base: &str) -> Result<String, HttpError> {
    let bad = || HttpError::BadUrl(base.to_owned());
    let rest = base.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    if authority.contains(':') && !authority.ends_with(']') {
        Ok(authority.to_owned())
    } else {
        Ok(format!("{authority}:80"))
    }
}

/// How one exchange on a connection failed: before any byte of an answer (the request may be
/// sent again on another connection), or after.
#[derive(Debug)]
enum Exchange {
    NothingRead(HttpError),
    Failed(HttpError),
}

/// One keep-alive connection, with the buffer its requests are written from.
#[derive(Debug)]
pub struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
    out: Vec<u8>,
    line: String,
}

impl Connection {
    /// Connects to `address` (`host:port`).
    pub async fn open(address: &str) -> Result<Self, HttpError> {
        let connect = |source| HttpError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = TcpStream::connect(address).await.map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: address.to_owned(),
            out: Vec::with_capacity(1024),
            line: String::with_capacity(128),
        })
    }

    /// Connects to the server at `base` (`http://host:port`).
    pub async fn open_url(base: &str) -> Result<Self, HttpError> {
        Self::open(&address_of(base)?).await
    }

    /// Sends `request` and reads its answer; the connection is good for another only if this
    /// returns `Ok` and the server did not ask to close it.
    pub async fn send(&mut self, request: Request<'_>) -> Result<Response, HttpError> {
        match self.exchange(request).await {
            Ok((response, _)) => Ok(response),
            Err(Exchange::NothingRead(error) | Exchange::Failed(error)) => Err(error),
        }
    }

    /// The answer, and whether the connection may carry another request.
    async fn exchange(&mut self, request: Request<'_>) -> Result<(Response, bool), Exchange> {
        self.write_request(request)
            .await
            .map_err(|e| Exchange::NothingRead(e.into()))?;
        self.line.clear();
        let read = self
            .stream
            .read_line(&mut self.line)
            .await
            .map_err(|e| Exchange::NothingRead(e.into()))?;
        if read == 0 {
            return Err(Exchange::NothingRead(HttpError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        self.read_rest(request.method)
            .await
            .map_err(Exchange::Failed)
    }

    async fn write_request(&mut self, request: Request<'_>) -> std::io::Result<()> {
        encode_request(&mut self.out, &self.host, request);
        self.stream.get_mut().write_all(&self.out).await
    }

    /// After the status line (in `self.line`): the headers and the body.
    async fn read_rest(&mut self, method: &str) -> Result<(Response, bool), HttpError> {
        let status = parse_status(&self.line)?;
        let head = self.read_headers().await?;
        let bodiless = method == "HEAD" || status == 204 || status == 304 || status < 200;
        let (body, reusable) = if bodiless {
            (Vec::new(), !head.close)
        } else if head.chunked {
            (self.read_chunked().await?, !head.close)
        } else if let Some(length) = head.content_length {
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await?;
            (body, !head.close)
        } else {
            let mut body = Vec::new();
            self.stream.read_to_end(&mut body).await?;
            (body, false)
        };
        let response = Response {
            status,
            retry_after: head.retry_after,
            body,
        };
        Ok((response, reusable))
    }

    async fn read_headers(&mut self) -> Result<Head, HttpError> {
        let mut head = Head::default();
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                return Ok(head);
            }
            let (name, value) = header
                .split_once(':')
                .ok_or(HttpError::Malformed("a header without a colon"))?;
            head.note(name.trim(), value.trim())?;
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await?;
            let size = self.line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| HttpError::Malformed("a chunk size that is not hex"))?;
            if size == 0 {
                // Trailers, if any, up to the empty line.
                loop {
                    self.line.clear();
                    let read = self.stream.read_line(&mut self.line).await?;
                    if read == 0 || self.line.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..]).await?;
            let mut crlf = [0; 2];
            self.stream.read_exact(&mut crlf).await?;
        }
    }
}

/// The headers the client acts on.
#[derive(Debug, Default)]
struct Head {
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
    retry_after: Option<u64>,
}

impl Head {
    fn note(&mut self, name: &str, value: &str) -> Result<(), HttpError> {
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse()
                .map_err(|_| HttpError::Malformed("a Content-Length that is not a number"))?;
            self.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            self.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("retry-after") {
            self.retry_after = value.parse().ok();
        }
        Ok(())
    }
}

/// Writes `request` into `out` (cleared first) as HTTP/1.1 to `host`: the head by copying its
/// parts, no formatting machinery, since it is on the path of every request.
fn encode_request(out: &mut Vec<u8>, host: &str, request: Request<'_>) {
    out.clear();
    for part in [
        request.method,
        " ",
        request.path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if request.method != "GET" {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(request.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.headers {
        for part in [*name, ": ", *value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
}

/// The status of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Result<u16, HttpError> {
    let mut words = line.split(' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("a status line that is not HTTP/1.x"));
    }
    words
        .next()
        .and_then(|code| code.trim().parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or(HttpError::Malformed("a status line without a status code"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn a_request_head_is_encoded_as_http_1_1() {
        let mut out = b"left over".to_vec();
        let headers = [("Tally-Signature", "t=1,v1=ab")];
        encode_request(
            &mut out,
            "127.0.0.1:8080",
            Request::post_json("/v1/donations", &headers, b"{\"a\":1}"),
        );
        assert_eq!(
            out,
            b"POST /v1/donations HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 7\r\nTally-Signature: t=1,v1=ab\r\n\r\n{\"a\":1}"
        );
        encode_request(&mut out, "h", Request::get("/healthz"));
        assert_eq!(out, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    /// A server on loopback that answers each connection's requests with `answers`, in order,
    /// then closes it; returns its base URL and the requests it read.
    async fn scripted(
        answers: Vec<&'static str>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut requests = Vec::new();
            for answer in answers {
                let mut request = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    if let Some(value) = line.strip_prefix("Content-Length: ") {
                        length = value.trim().parse().unwrap();
                    }
                    request.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                request.push_str(std::str::from_utf8(&body).unwrap());
                requests.push(request);
                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        (base, task)
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_answers_on_one_connection() {
        let (base, server) = scripted(vec![
            "HTTP/1.1 202 Accepted\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let pool = Pool::new(&base, 4).unwrap();
        let timeout = Duration::from_secs(10);
        let headers = [("Tally-Signature", "t=1,v1=ab")];
        let first = pool
            .send(
                Request::post_json("/v1/donations", &headers, b"{}"),
                timeout,
            )
            .await
            .unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (202, &b"{\"a\":1}"[..])
        );
        let second = pool.send(Request::get("/x?y=1"), timeout).await.unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (200, &b"abcde"[..])
        );
        let third = pool.send(Request::get("/z"), timeout).await.unwrap();
        assert_eq!((third.status, third.retry_after), (429, Some(3)));
        let requests = server.await.unwrap();
        assert_eq!(requests.len(), 3, "one connection carried all three");
        assert!(requests[0].starts_with("POST /v1/donations HTTP/1.1\r\n"));
        assert!(requests[0].contains("Content-Length: 2\r\n"));
        assert!(requests[0].contains("Tally-Signature: t=1,v1=ab\r\n"));
        assert!(requests[0].ends_with("\r\n\r\n{}"));
        assert!(requests[1].starts_with("GET /x?y=1 HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error_and_a_closed_idle_connection_is_replaced() {
        let (base, server) = scripted(vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let pool = Pool::new(&base, 4).unwrap();
        let timeout = Duration::from_secs(10);
        assert_eq!(
            pool.send(Request::get("/"), timeout).await.unwrap().body,
            b"ok"
        );
        server.await.unwrap();
        // The server is gone: the pooled connection fails before an answer, and so does a new
        // one, which now cannot connect.
        let error = pool.send(Request::get("/"), timeout).await.unwrap_err();
        assert!(
            matches!(error, HttpError::Connect { .. }),
            "the request went again on a new connection: {error}"
        );

        let (base, _server) =
            scripted(vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let pool = Pool::new(&base, 4).unwrap();
        assert!(pool.send(Request::get("/"), timeout).await.is_err());
    }

    #[test]
    fn urls_and_status_lines_are_checked() {
        assert_eq!(
            address_of("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(address_of("http://[::1]:9/x").unwrap(), "[::1]:9");
        assert_eq!(address_of("http://example").unwrap(), "example:80");
        assert!(address_of("https://a:1").is_err());
        assert!(address_of("http://").is_err());
        assert_eq!(
            parse_status("HTTP/1.1 503 Service Unavailable\r\n").unwrap(),
            503
        );
        assert!(parse_status("SSH-2.0\r\n").is_err());
        assert!(parse_status("HTTP/1.1 abc\r\n").is_err());
    }
}
