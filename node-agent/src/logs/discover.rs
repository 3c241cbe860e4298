//! Which log files to follow and whose they are: the first step of the agent's log path
//! (**discovery** → [`super::tail`] → [`super::formats`] → [`super::analyzer`] → events).
//!
//! Attribution comes from the path alone, because the kubelet encodes it there:
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log` (the CRI layout;
//!   namespaces and pod names cannot hold `_`, so the split is exact);
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`, symlinks the
//!   kubelet keeps into the pods layout (followed only when they point somewhere else,
//!   since the same file must not be mined twice);
//! - `<dir>/<id>/<id>-json.log` (Docker's own layout under `/var/lib/docker/containers`);
//! - anything else ending in `.log`: a plain file, known by its path.
//!
//! Rotated files (`0.log.20240101-000000`, `*.gz`) are not followed: the tailer finishes
//! the old file itself when the path moves to a new inode. The walk is bounded in depth
//! (3 levels) and in directory entries visited.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Whose a log file is. Sources with the same [`Origin::entity`] share one analyzer
/// (one container's restarts write `0.log`, `1.log`, ... of one source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// `log/pod/<pod uid>/<container>`, `log/container/<container id>` or
    /// `log/file/<absolute path>`.
    pub entity: String,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Container runtime id.
    pub container_id: Option<String>,
    /// The file, for plain files.
    pub path: Option<String>,
    /// The process (command name) that writes a plain file, when the operator said so
    /// (`--log-file COMM=PATH`): the aggregator then puts the file's anomalies on that
    /// process's component rather than on the host.
    pub comm: Option<String>,
}

impl Origin {
    /// A container in the pods layout, from the pod directory's and container
    /// directory's names; `None` when the pod directory is not `<ns>_<pod>_<uid>`.
    pub fn from_pod_dir(pod_dir: &str, container: &str) -> Option<Origin> {
        let mut parts = pod_dir.split('_');
        let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [ns, pod, uid, container].iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(Origin {
            entity: format!("log/pod/{uid}/{container}"),
            namespace: Some(ns.to_string()),
            pod: Some(pod.to_string()),
            pod_uid: Some(uid.to_string()),
            container: Some(container.to_string()),
            ..Origin::default()
        })
    }

    /// A container from a `/var/log/containers` file name,
    /// `<pod>_<namespace>_<container>-<id>.log`.
    pub fn from_container_link(file_name: &str) -> Option<Origin> {
        let stem = file_name.strip_suffix(".log")?;
        let mut parts = stem.split('_');
        let (pod, ns, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (container, id) = rest.rsplit_once('-')?;
        if [pod, ns, container].iter().any(|s| s.is_empty()) || !is_container_id(id) {
            return None;
        }
        Some(Origin {
            entity: format!("log/container/{id}"),
            namespace: Some(ns.to_string()),
            pod: Some(pod.to_string()),
            container: Some(container.to_string()),
            container_id: Some(id.to_string()),
            ..Origin::default()
        })
    }

    /// A Docker `json-file` log, `<id>/<id>-json.log`.
    pub fn from_docker(dir_name: &str, file_name: &str) -> Option<Origin> {
        let id = file_name.strip_suffix("-json.log")?;
        if id != dir_name || !is_container_id(id) {
            return None;
        }
        Some(Origin {
            entity: format!("log/container/{id}"),
            container_id: Some(id.to_string()),
            ..Origin::default()
        })
    }

    /// A plain file, by its absolute path.
    pub fn file(path: &Path) -> Origin {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = abs.to_string_lossy();
        Origin {
            entity: format!("log/file/{}", text.trim_start_matches('/')),
            path: Some(text.into_owned()),
            ..Origin::default()
        }
    }

    /// A plain file written by the process named `comm`.
    pub fn file_of(path: &Path, comm: &str) -> Origin {
        Origin {
            comm: Some(comm.to_string()),
            ..Origin::file(path)
        }
    }

    /// Series labels: `comm`, `container`, `namespace`, `pod` when known (sorted by key).
    pub fn labels(&self) -> Vec<(String, String)> {
        [
            ("comm", &self.comm),
            ("container", &self.container),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), label_value(v))))
        .collect()
    }

    /// Event attributes: every field that is known (sorted by key).
    pub fn attrs(&self) -> Vec<(String, String)> {
        [
            ("comm", &self.comm),
            ("container", &self.container),
            ("container_id", &self.container_id),
            ("namespace", &self.namespace),
            ("path", &self.path),
            ("pod", &self.pod),
            ("pod_uid", &self.pod_uid),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect()
    }
}

/// `,` and `=` separate labels in the `labels` column, and control characters have no
/// business there: they become `_` (as in the process collector).
fn label_value(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c == ',' || c == '=' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Docker and containerd ids: 64 lowercase hex digits (shorter ids are accepted from 12).
fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `0.log`, `12.log`: the kubelet's per-restart file names.
fn is_restart_log(name: &str) -> bool {
    name.strip_suffix(".log")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Files to follow, in scan order, each once.
    pub files: Vec<(PathBuf, Origin)>,
    /// True when the entry limit cut the walk short.
    pub incomplete: bool,
}

/// Walks `dirs` (in order) for log files, at most `max_entries` directory entries in
/// all. A file reached twice (a `/var/log/containers` link into `/var/log/pods`, or a dir
/// given twice) is listed once, under the first path found; `exclude` holds canonical
/// paths already followed otherwise (the `--log-file` files). Missing or unreadable
/// directories are skipped: a host without Kubernetes simply has no container logs.
pub fn scan(dirs: &[PathBuf], exclude: &HashSet<PathBuf>, max_entries: usize) -> Discovered {
    let mut walk = Walk {
        seen: exclude.clone(),
        budget: max_entries,
        out: Discovered::default(),
    };
    for dir in dirs {
        for (name, path, is_dir) in walk.list(dir) {
            if is_dir {
                walk.second_level(&name, &path);
            } else if name.ends_with(".log") {
                let origin =
                    Origin::from_container_link(&name).unwrap_or_else(|| Origin::file(&path));
                walk.push(path, origin);
            }
        }
    }
    walk.out
}

struct Walk {
    seen: HashSet<PathBuf>,
    budget: usize,
    out: Discovered,
}

impl Walk {
    /// `(name, path, is_dir)` of the entries of `dir`, sorted by name so scans are
    /// stable; symlinks are resolved (the containers directory is made of them). Names
    /// that are not UTF-8 are skipped: no runtime writes them.
    fn list(&mut self, dir: &Path) -> Vec<(String, PathBuf, bool)> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut res = Vec::new();
        for entry in rd.flatten() {
            if self.budget == 0 {
                self.out.incomplete = true;
                break;
            }
            self.budget -= 1;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() || meta.is_file() {
                res.push((name, path, meta.is_dir()));
            }
        }
        res.sort();
        res
    }

    /// A pod directory (`<ns>_<pod>_<uid>/<container>/<n>.log`), a Docker container
    /// directory (`<id>/<id>-json.log`), or any directory's `*.log` files.
    fn second_level(&mut self, name: &str, dir: &Path) {
        for (child, path, is_dir) in self.list(dir) {
            if is_dir {
                for (file, fpath, fdir) in self.list(&path) {
                    if fdir || !file.ends_with(".log") {
                        continue;
                    }
                    let origin = if is_restart_log(&file) {
                        Origin::from_pod_dir(name, &child)
                    } else {
                        None
                    };
                    let origin = origin.unwrap_or_else(|| Origin::file(&fpath));
                    self.push(fpath, origin);
                }
            } else if child.ends_with(".log") {
                let origin =
                    Origin::from_docker(name, &child).unwrap_or_else(|| Origin::file(&path));
                self.push(path, origin);
            }
        }
    }

    fn push(&mut self, path: PathBuf, origin: Origin) {
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if self.seen.insert(canonical) {
            self.out.files.push((path, origin));
        }
    }
}
