//! A private nginx load balancer for tests, configured from the project's own
//! `docker/nginx.conf` (the same file compose uses) by the same rewrite as
//! `scripts/cluster`: our upstream servers, a loopback listen address, and
//! runtime paths under a temporary prefix.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx, killed on drop.
pub struct Nginx {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nginx".into()
}

/// Rewrites the template for a prefix, a listen port and upstream addresses.
pub fn render(template: &str, prefix: &Path, listen: u16, upstreams: &[SocketAddr]) -> String {
    let p = prefix.display();
    let main = format!("pid {p}/nginx.pid;\nerror_log {p}/error.log notice;\n");
    let mut http = format!("    access_log {p}/access.log;\n");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        http.push_str(&format!("    {t}_temp_path {p}/{t}_temp;\n"));
    }
    let mut out = String::new();
    let (mut skip, mut runtime_blocks, mut upstream_blocks, mut listens) = (false, 0, 0, 0);
    for line in template.lines() {
        let t = line.trim();
        match t {
            "# BEGIN UPSTREAM SERVERS" => {
                out.push_str(line);
                out.push('\n');
                for u in upstreams {
                    out.push_str(&format!("        server {u};\n"));
                }
                skip = true;
                upstream_blocks += 1;
                continue;
            }
            "# BEGIN RUNTIME PATHS" => {
                out.push_str(line);
                out.push('\n');
                runtime_blocks += 1;
                out.push_str(if runtime_blocks == 1 { &main } else { &http });
                skip = true;
                continue;
            }
            "# END UPSTREAM SERVERS" | "# END RUNTIME PATHS" => skip = false,
            _ if skip => continue,
            "listen 8080;" => {
                listens += 1;
                out.push_str(&format!("        listen 127.0.0.1:{listen};\n"));
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(
        (upstream_blocks, runtime_blocks, listens),
        (1, 2, 1),
        "docker/nginx.conf lost its markers"
    );
    out
}

impl Nginx {
    /// Starts nginx in front of `upstreams` on a free loopback port.
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        let template =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx.conf"))
                .expect("docker/nginx.conf");
        let dir = tempfile::tempdir().expect("tempdir");
        // Workers may run as another user: let them reach their temp dirs.
        let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, render(&template, dir.path(), port, upstreams)).expect("write conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (apt-get install -y nginx-light)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut nginx = Nginx {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                nginx.stop();
                panic!("nginx did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops nginx with SIGTERM (its fast shutdown, which also ends its
    /// worker processes; a SIGKILL of the master would leave them running,
    /// still holding the port), and SIGKILL only if it does not exit within
    /// 5 s.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
