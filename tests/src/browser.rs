//! Headless Chromium (Debian's `chromium` package) for the tests that check a
//! page in a real browser: a screenshot, and the DOM as the browser built it
//! (`--dump-dom`). Each run gets its own temporary profile
//! (`--user-data-dir`), runs in its own process group, and is killed with
//! that group if it does not finish in time. As root (CI) Chromium refuses
//! to start without `--no-sandbox`; the pages these tests open are files
//! they wrote themselves.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long one run may take (it takes about a second).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The installed Chromium.
pub struct Chromium {
    bin: PathBuf,
}

impl Chromium {
    /// `$BATON_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH;
    /// panics with the install command when there is none.
    pub fn find() -> Chromium {
        let candidates: Vec<PathBuf> = match std::env::var_os("BATON_CHROMIUM") {
            Some(path) => vec![PathBuf::from(path)],
            None => std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
                        .collect()
                })
                .unwrap_or_default(),
        };
        match candidates.into_iter().find(|p| p.is_file()) {
            Some(bin) => Chromium { bin },
            None => panic!(
                "this test opens the page in headless Chromium, which is not installed: \
                 apt-get install chromium (as root; scripts/test.sh does), or set BATON_CHROMIUM"
            ),
        }
    }

    /// The DOM of `page` once loaded, serialized by the browser.
    pub fn dump_dom(&self, page: &Path) -> anyhow::Result<String> {
        let out = tempfile::NamedTempFile::new()?;
        self.run(&["--dump-dom".to_string()], page, out.path())?;
        let dom = std::fs::read_to_string(out.path())?;
        if dom.trim().is_empty() {
            bail!("chromium printed no DOM for {}", page.display());
        }
        Ok(dom)
    }

    /// A PNG of the top `width` x `height` pixels of `page`.
    pub fn screenshot(
        &self,
        page: &Path,
        png: &Path,
        width: u32,
        height: u32,
    ) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(png);
        let out = tempfile::NamedTempFile::new()?;
        self.run(
            &[
                format!("--screenshot={}", png.display()),
                format!("--window-size={width},{height}"),
                "--hide-scrollbars".to_string(),
            ],
            page,
            out.path(),
        )?;
        let bytes = std::fs::read(png)
            .with_context(|| format!("chromium wrote no screenshot at {}", png.display()))?;
        if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("{} is not a PNG", png.display());
        }
        Ok(())
    }

    fn run(&self, args: &[String], page: &Path, stdout: &Path) -> anyhow::Result<()> {
        let profile = tempfile::Builder::new()
            .prefix("baton-chromium-")
            .tempdir()?;
        let stderr = profile.path().join("stderr.log");
        let page = page
            .canonicalize()
            .with_context(|| format!("no page at {}", page.display()))?;
        let mut child = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-crash-reporter",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ))
            .args(args)
            .arg(format!("file://{}", page.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let group = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait();
                bail!(
                    "chromium did not finish within {TIMEOUT:?} (killed): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever it started and left behind goes with its group.
        let _ = killpg(group, Signal::SIGKILL);
        if !status.success() {
            bail!(
                "chromium exited with {status}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The start tags of a serialized DOM, each as its text between `<` and
/// `>` (closing tags, comments and the doctype left out). In serialized HTML
/// a `<` in text is always `&lt;`, so every literal `<` opens a tag; inside
/// one, a `>` ends it unless it sits in a quoted attribute value.
pub fn start_tags(dom: &str) -> Vec<&str> {
    let mut tags = Vec::new();
    let bytes = dom.as_bytes();
    let mut i = 0;
    while let Some(open) = dom[i..].find('<').map(|o| i + o) {
        let mut quote = None;
        let mut end = open + 1;
        while end < bytes.len() {
            match (bytes[end], quote) {
                (b'"' | b'\'', None) => quote = Some(bytes[end]),
                (q, Some(open_q)) if q == open_q => quote = None,
                (b'>', None) => break,
                _ => {}
            }
            end += 1;
        }
        let tag = &dom[open + 1..end.min(dom.len())];
        if !tag.starts_with('/') && !tag.starts_with('!') {
            tags.push(tag);
        }
        i = (end + 1).min(dom.len());
    }
    tags
}

/// The element name of a start tag (`rect` of `rect x="1"`).
pub fn tag_name(tag: &str) -> &str {
    tag.split(|c: char| c.is_whitespace() || c == '/')
        .next()
        .unwrap_or("")
}

/// The value of attribute `name` in a start tag, as serialized (entities kept).
pub fn attr<'t>(tag: &'t str, name: &str) -> Option<&'t str> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let len = tag[at..].find('"')?;
    Some(&tag[at..at + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_attributes_come_from_markup_not_from_text() {
        let dom = r#"<!DOCTYPE html><html><body data-x="a>b"><p>&lt;script&gt; data-step-id="9"</p><g data-step-id="1"><title>x</title></g></body></html>"#;
        let tags = start_tags(dom);
        let names: Vec<&str> = tags.iter().map(|t| tag_name(t)).collect();
        assert_eq!(names, ["html", "body", "p", "g", "title"]);
        assert_eq!(attr(tags[1], "data-x"), Some("a>b"));
        let bars = tags
            .iter()
            .filter(|t| attr(t, "data-step-id").is_some())
            .count();
        assert_eq!(bars, 1);
    }
}
