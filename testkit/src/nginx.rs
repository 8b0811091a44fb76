//! A private nginx load balancer in front of relay nodes, configured from
//! the project's own `docker/nginx.conf` (the same file compose uses: the
//! WebSocket upgrade headers and timeouts): our upstream servers, a loopback
//! listen address, and runtime paths under a temporary prefix. Checked with
//! `nginx -t` first, ready when its port accepts, stopped with SIGTERM (its
//! fast shutdown, which also ends its workers) on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::process;

/// The template: the repository's `docker/nginx.conf`.
pub const TEMPLATE: &str = include_str!("../../docker/nginx.conf");

/// A running nginx, stopped on drop.
pub struct Nginx {
    child: Option<Child>,
    /// Its listen address.
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
        Self::try_start(upstreams, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts nginx in front of `upstreams` on `port` (a free one when
    /// `None`); `Err` carries nginx's error log.
    pub fn try_start(upstreams: &[SocketAddr], port: Option<u16>) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        // Workers may run as another user: let them reach their temp dirs.
        let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
        let port = port.unwrap_or_else(free_port);
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, render(TEMPLATE, dir.path(), port, upstreams))
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let error_log = dir.path().join("error.log");
        let command = |test: bool| {
            let mut c = Command::new(binary());
            c.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log);
            if test {
                c.args(["-t", "-q"]);
            } else {
                c.args(["-g", "daemon off;"]);
            }
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let checked = command(true)
            .status()
            .map_err(|e| format!("running nginx ({e}): apt-get install -y nginx-light"))?;
        if !checked.success() {
            return Err(format!(
                "nginx rejected its config:\n{}",
                process::tail(&error_log, 30)
            ));
        }
        let child = command(false)
            .spawn()
            .map_err(|e| format!("spawning nginx: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut nginx = Nginx {
            child: Some(child),
            addr,
            dir,
        };
        let ready = {
            let child = nginx.child.as_mut().expect("spawned");
            process::wait_ready(child, "nginx", Duration::from_secs(10), || {
                TcpStream::connect(addr).is_ok()
            })
        };
        if let Err(e) = ready {
            nginx.stop();
            return Err(format!("{e}:\n{}", process::tail(&error_log, 30)));
        }
        Ok(nginx)
    }

    /// The WebSocket URL through the load balancer.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The HTTP base URL through the load balancer.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The master's PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether nginx exited on its own (it is reaped then).
    pub fn exited(&mut self) -> bool {
        process::exited(&mut self.child)
    }

    /// The error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// Stops nginx with SIGTERM (its fast shutdown, which also ends its
    /// worker processes; a SIGKILL of the master would leave them running,
    /// still holding the port), and SIGKILL only if it does not exit within
    /// 5 s.
    pub fn stop(&mut self) {
        process::terminate(&mut self.child, Duration::from_secs(5));
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_keeps_its_markers() {
        let ups: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let conf = render(TEMPLATE, Path::new("/p"), 9, &ups);
        assert!(conf.contains("server 127.0.0.1:1;") && conf.contains("server 127.0.0.1:2;"));
        assert!(conf.contains("listen 127.0.0.1:9;"));
        assert!(conf.contains("pid /p/nginx.pid;"));
    }
}
