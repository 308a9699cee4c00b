//! A minimal HTTP/1.1 client for talking to `hymba-ref serve` on the loopback: what the tests and
//! the load generator (`serve-load`) use. One request per connection (`Connection: close`);
//! bodies delimited by `Content-Length`, chunked, or the connection's end. Not a general client:
//! users call the server with curl or an OpenAI client library.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response's status line and headers; the body follows on the connection.
pub struct Head {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A whole response.
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An open request whose response is being read.
pub struct Connection {
    pub head: Head,
    reader: BufReader<TcpStream>,
}

/// Send `method path` with `headers` and `body`; returns once the response's head has arrived.
/// Reads time out after `timeout`.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> io::Result<Connection> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?;
    Ok(Connection { head, reader })
}

/// `POST path` with a JSON body, the whole response read.
pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value, headers: &[(&str, &str)], timeout: Duration) -> io::Result<Response> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, "POST", path, &all, body.to_string().as_bytes(), timeout)?.into_response()
}

/// `GET path`, the whole response read.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)], timeout: Duration) -> io::Result<Response> {
    send(addr, "GET", path, headers, b"", timeout)?.into_response()
}

impl Connection {
    /// Read the rest of the body.
    pub fn into_response(mut self) -> io::Result<Response> {
        let mut body = Vec::new();
        if self.head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size = self.line()?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad("chunk size"))?;
                if size == 0 {
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                self.line()?;
            }
        } else if let Some(length) = self.head.header("content-length") {
            let length: usize = length.trim().parse().map_err(|_| bad("content-length"))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Response { head: self.head, body })
    }

    /// The next server-sent event's `data:` payload; `None` at the end of the stream.
    pub fn next_event(&mut self) -> io::Result<Option<String>> {
        let mut data: Option<String> = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(data);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if data.is_some() {
                    return Ok(data);
                }
                continue;
            }
            if let Some(payload) = line.strip_prefix("data:") {
                let payload = payload.strip_prefix(' ').unwrap_or(payload);
                data = Some(match data {
                    Some(d) => d + "\n" + payload,
                    None => payload.to_string(),
                });
            }
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Head> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended in the headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok(Head { status, headers });
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad("header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed HTTP response: {what}"))
}
