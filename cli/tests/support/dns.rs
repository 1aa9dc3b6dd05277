//! A real DNS server the tests control: `pebble-challtestsrv` (Debian's `pebble` package,
//! installed by `.ci/infra.sh`), the fake DNS of Let's Encrypt's test ACME server. Its management
//! API adds and removes TXT records; its DNS listener answers them over UDP and TCP.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct TestDns {
    child: Child,
    /// `127.0.0.1:<port>`, for `ENCLII_DNS_RESOLVER`.
    pub resolver: String,
    management: String,
}

impl TestDns {
    pub fn start() -> Self {
        let resolver = format!("127.0.0.1:{}", free_port());
        let management = format!("127.0.0.1:{}", free_port());
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &resolver, "-management", &management])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            // Every other name is 127.0.0.1 (its default) and has no AAAA record, so Pebble's
            // HTTP-01 validations reach the router on the loopback interface.
            .args(["-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package `pebble`; `.ci/infra.sh` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&management).is_err() {
            assert!(Instant::now() < deadline, "pebble-challtestsrv did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            resolver,
            management,
        }
    }

    /// Publishes a TXT record (`name` without the trailing dot).
    pub fn set_txt(&self, name: &str, value: &str) {
        self.manage(
            "set-txt",
            &serde_json::json!({"host": format!("{name}."), "value": value}),
        );
    }

    /// Points `name` at `address` (an A record) instead of the default 127.0.0.1.
    pub fn set_a(&self, name: &str, address: &str) {
        self.manage(
            "add-a",
            &serde_json::json!({"host": format!("{name}."), "addresses": [address]}),
        );
    }

    /// Back to the default address (127.0.0.1).
    pub fn clear_a(&self, name: &str) {
        self.manage("clear-a", &serde_json::json!({"host": format!("{name}.")}));
    }

    pub fn clear_txt(&self, name: &str) {
        self.manage("clear-txt", &serde_json::json!({"host": format!("{name}.")}));
    }

    fn manage(&self, verb: &str, body: &serde_json::Value) {
        use std::io::{Read, Write};
        let body = body.to_string();
        let mut stream = TcpStream::connect(&self.management).unwrap();
        write!(
            stream,
            "POST /{verb} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.management,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{verb}: {response}");
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
