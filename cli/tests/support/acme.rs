//! A real ACME server the tests control: Pebble (Debian's `pebble` package, Let's Encrypt's test
//! CA, installed by `.ci/infra.sh`), resolving hosts through a [`TestDns`] and validating HTTP-01
//! on the router's plain port. Its own HTTPS uses a throwaway CA made here with `openssl`; the
//! certificates it issues chain to a root fetched from its management API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::dns::TestDns;
use super::free_port;

pub struct TestAcme {
    child: Child,
    dir: PathBuf,
    /// The directory URL, for `ENCLII_ACME_DIRECTORY`.
    pub directory: String,
    /// The CA of Pebble's own HTTPS, for `ENCLII_ACME_CA_ROOT`.
    pub ca_root: String,
    management: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate it signs for `names` (DNS or `IP:` entries), as PEM files in `dir`:
/// `<stem>.pem`, `<stem>.key` and the CA's `<stem>-ca.pem`.
pub fn make_certificate(dir: &Path, stem: &str, names: &[&str]) {
    let ca_key = format!("{stem}-ca.key");
    let ca = format!("{stem}-ca.pem");
    let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(curve);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=enclii test CA",
    ]);
    openssl(dir, &args);
    let (key, csr, cert) = (format!("{stem}.key"), format!("{stem}.csr"), format!("{stem}.pem"));
    let mut args = vec!["req"];
    args.extend(curve);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=enclii test"]);
    openssl(dir, &args);
    let sans: Vec<String> = names
        .iter()
        .map(|n| match n.strip_prefix("IP:") {
            Some(ip) => format!("IP:{ip}"),
            None => format!("DNS:{n}"),
        })
        .collect();
    let ext = format!("{stem}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

impl TestAcme {
    /// Pebble validating HTTP-01 on port `http_port` of whatever `dns` resolves hosts to.
    pub fn start(dns: &TestDns, http_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("enclii_cli_test_pebble_{}_{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        make_certificate(&dir, "pebble", &["localhost", "IP:127.0.0.1"]);
        let listen = format!("127.0.0.1:{}", free_port());
        let management = format!("127.0.0.1:{}", free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen,
            "managementListenAddress": management,
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns.resolver])
            // Validate at once (not after a random sleep) and never reject a good nonce.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("pebble (Debian package `pebble`; `.ci/infra.sh` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            directory: format!("https://{listen}/dir"),
            ca_root: dir.join("pebble-ca.pem").display().to_string(),
            management,
            dir,
        }
    }

    /// The root the certificates Pebble issues chain to (a PEM file path).
    pub fn issuer_root(&self) -> String {
        let path = self.dir.join("issuer-root.pem");
        let pem = super::pipeline::run(Command::new("curl").args([
            "-sSf",
            "--cacert",
            &self.ca_root,
            &format!("https://{}/roots/0", self.management),
        ]));
        std::fs::write(&path, format!("{pem}\n")).unwrap();
        path.display().to_string()
    }

    /// Pebble's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for TestAcme {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl` over HTTPS to `host` at `addr` (the router's TLS listener), trusting `root`:
/// (status, body), or the error curl gave.
pub fn https_get(addr: &str, host: &str, path: &str, root: &str) -> Result<(u16, String), String> {
    let port = addr.rsplit_once(':').unwrap().1;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", root, "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((code.trim().parse().unwrap(), body.trim().to_string()))
}

/// The serial number of the certificate the TLS listener at `addr` serves for `host`.
pub fn served_serial(addr: &str, host: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
