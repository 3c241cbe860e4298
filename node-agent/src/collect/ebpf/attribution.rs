//! Who a kernel record belongs to: cgroup id → cgroup path → container and pod.
//!
//! The eBPF programs report cgroup v2 ids (`bpf_get_current_cgroup_id`, or
//! `task->cgroups->dfl_cgrp->kn->id`). On cgroup v2 the id is the inode number of the
//! cgroup's directory, so [`CgroupPaths`] walks the v2 tree (the cgroup root itself, or its
//! `unified/` on a hybrid host) and maps inodes to paths. [`attribute`] then reads the
//! container runtime, container id, pod UID and QoS class out of the path alone, with no
//! API server: every runtime and kubelet cgroup driver writes them into the names.
//!
//! On a v1-only host the v2 id is always the root's; [`pick_v1_path`] reads a process's
//! own `/proc/<pid>/cgroup` instead, while the process is alive.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a cgroup path tells about its owner. Every field is optional: a systemd service
/// has none but `systemd_unit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Kubernetes pod UID, with dashes (`1b4e28ba-2fa1-11d2-883f-0016d3cca427`).
    pub pod_uid: Option<String>,
    /// Container id (usually 64 hex digits).
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`; `None` when the path does not say
    /// (the kubelet's cgroupfs driver names containers by bare id).
    pub runtime: Option<&'static str>,
    /// Pod QoS class: `guaranteed`, `burstable`, `besteffort`.
    pub qos: Option<&'static str>,
    /// The innermost systemd unit (`ssh.service`, `docker-<id>.scope`, `user-1000.slice`).
    pub systemd_unit: Option<String>,
}

impl Attribution {
    /// `(key, value)` labels for series and attrs for events: `container_id`, `pod_uid`,
    /// `qos`, `runtime`, when known.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut res = Vec::new();
        if let Some(v) = &self.container_id {
            res.push(("container_id", v.clone()));
        }
        if let Some(v) = &self.pod_uid {
            res.push(("pod_uid", v.clone()));
        }
        if let Some(v) = self.qos {
            res.push(("qos", v.to_string()));
        }
        if let Some(v) = self.runtime {
            res.push(("runtime", v.to_string()));
        }
        res
    }
}

fn is_hex_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID from `pod<uid>` (`_` or `-` separated), normalised to dashes.
fn pod_uid(component: &str) -> Option<String> {
    let rest = component.strip_prefix("pod")?;
    let uid = rest.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(idx, b)| match idx {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    ok.then_some(uid)
}

/// `(runtime, id)` from one path component: systemd scopes (`cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`) or a bare id (cgroupfs).
fn container(component: &str) -> Option<(Option<&'static str>, String)> {
    if let Some(scope) = component.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("cri-containerd-", "containerd"),
            ("crio-conmon-", "cri-o"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
            ("libpod-conmon-", "podman"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = scope.strip_prefix(prefix)
                && is_hex_id(id)
            {
                return Some((Some(runtime), id.to_string()));
            }
        }
        return None;
    }
    // cgroupfs driver: `.../pod<uid>/<id>`, `/docker/<id>`, containerd's `crio-<id>`
    // without .scope on some setups.
    if let Some(id) = component.strip_prefix("crio-")
        && is_hex_id(id)
    {
        return Some((Some("cri-o"), id.to_string()));
    }
    is_hex_id(component).then(|| (None, component.to_string()))
}

/// Reads the owner of a cgroup out of its path (relative to the hierarchy root, with or
/// without a leading `/`; a v1 controller prefix like `memory/` is harmless).
///
/// Layouts understood (v1 and v2 alike):
/// - kubelet, systemd driver: `kubepods.slice/kubepods-burstable.slice/
///   kubepods-burstable-pod<uid_with_underscores>.slice/<runtime scope>`
/// - kubelet, cgroupfs driver: `kubepods/burstable/pod<uid>/<id>` (guaranteed pods sit
///   directly under `kubepods/`)
/// - runtime scopes: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
///   `libpod-<id>.scope`; Docker's cgroupfs driver `docker/<id>`
/// - systemd units: the innermost `*.service`, `*.scope` or `*.slice`
pub fn attribute(cgroup_path: &str) -> Attribution {
    let mut res = Attribution::default();
    let mut in_kubepods = false;
    let mut parent: Option<&str> = None;
    for comp in cgroup_path.split('/').filter(|c| !c.is_empty()) {
        if comp.contains("kubepods") {
            in_kubepods = true;
        }
        if in_kubepods {
            for (needle, qos) in [("burstable", "burstable"), ("besteffort", "besteffort")] {
                if comp == needle || comp.contains(&format!("kubepods-{needle}")) {
                    res.qos = Some(qos);
                }
            }
            // `kubepods-burstable-pod<uid>.slice`, `kubepods-pod<uid>.slice`, `pod<uid>`.
            let name = comp.strip_suffix(".slice").unwrap_or(comp);
            let pod_part = name.rsplit('-').next().filter(|p| p.starts_with("pod"));
            if let Some(uid) = pod_uid(name).or_else(|| pod_part.and_then(pod_uid)) {
                res.pod_uid = Some(uid);
            }
        }
        if let Some((runtime, id)) = container(comp) {
            // A bare hex id counts only where a runtime puts one: under a pod (cgroupfs
            // driver: the runtime is not in the path), or under Docker's `docker/`.
            let docker = parent == Some("docker");
            if runtime.is_some() || docker || res.pod_uid.is_some() {
                res.container_id = Some(id);
                res.runtime = runtime.or(docker.then_some("docker"));
            }
        }
        if comp.ends_with(".service") || comp.ends_with(".scope") || comp.ends_with(".slice") {
            res.systemd_unit = Some(comp.to_string());
        }
        parent = Some(comp);
    }
    if res.pod_uid.is_some() && res.qos.is_none() {
        res.qos = Some("guaranteed");
    }
    if res.pod_uid.is_none() {
        res.qos = None;
    }
    res
}

/// From a v1 host's `/proc/<pid>/cgroup` (`hierarchy:controllers:path` lines), the path
/// most likely to name the container: `memory`, then `cpu`/`cpuacct`, then
/// `name=systemd`, then the v2 line (`0::`). `None` when every path is `/`.
pub fn pick_v1_path(proc_pid_cgroup: &str) -> Option<&str> {
    let mut best: Option<(u8, &str)> = None;
    for line in proc_pid_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path == "/" || path.is_empty() {
            continue;
        }
        let rank = if controllers.split(',').any(|c| c == "memory") {
            0
        } else if controllers.split(',').any(|c| c == "cpu" || c == "cpuacct") {
            1
        } else if controllers == "name=systemd" {
            2
        } else if controllers.is_empty() {
            3
        } else {
            4
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, path));
        }
    }
    best.map(|(_, path)| path)
}

/// Where the cgroup v2 tree is mounted: `root` itself when it is v2, else `root/unified`
/// (systemd's hybrid layout), else none (v1 only).
pub fn v2_root(cgroup_root: &Path) -> Option<PathBuf> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return Some(cgroup_root.to_path_buf());
    }
    let unified = cgroup_root.join("unified");
    unified.join("cgroup.procs").exists().then_some(unified)
}

/// A resolved cgroup: its path relative to the v2 root (`""` for the root) and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Relative path, no leading `/`.
    pub path: String,
    /// What the path says.
    pub attribution: Attribution,
}

/// cgroup v2 id → [`CgroupInfo`], by walking the tree. Bounded: at most [`Self::MAX`]
/// cgroups and [`Self::MAX_DEPTH`] levels, and a walk at most every [`Self::RESCAN_MIN`]
/// (an unknown id before then stays unknown for this tick).
pub struct CgroupPaths {
    root: Option<PathBuf>,
    by_id: HashMap<u64, CgroupInfo>,
    last_walk: Option<Instant>,
    /// Cgroups seen in the last walk beyond the bound.
    pub n_dropped: usize,
}

impl CgroupPaths {
    /// Most cgroups remembered.
    pub const MAX: usize = 16384;
    /// Deepest level walked (the root is 0).
    pub const MAX_DEPTH: usize = 12;
    /// Least time between two walks.
    pub const RESCAN_MIN: Duration = Duration::from_secs(2);

    /// Resolver for the v2 tree under `cgroup_root` (see [`v2_root`]).
    pub fn new(cgroup_root: &Path) -> Self {
        CgroupPaths {
            root: v2_root(cgroup_root),
            by_id: HashMap::new(),
            last_walk: None,
            n_dropped: 0,
        }
    }

    /// Whether there is a v2 tree to resolve ids in.
    pub fn has_v2(&self) -> bool {
        self.root.is_some()
    }

    /// The cgroup with this id, walking the tree again if it is unknown and the last walk
    /// is old enough.
    pub fn resolve(&mut self, id: u64, now: Instant) -> Option<&CgroupInfo> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self
                .last_walk
                .is_none_or(|t| now.saturating_duration_since(t) >= Self::RESCAN_MIN)
        {
            self.walk(now);
        }
        self.by_id.get(&id)
    }

    /// Whether `id` was present at the last walk (for evicting dead cgroups' histograms).
    pub fn known(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Re-reads the whole tree (breadth first, bounded).
    pub fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        self.n_dropped = 0;
        let mut queue = std::collections::VecDeque::from([(root.clone(), 0usize)]);
        while let Some((dir, depth)) = queue.pop_front() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if self.by_id.len() >= Self::MAX {
                self.n_dropped += 1;
                continue;
            }
            let rel = dir
                .strip_prefix(&root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.by_id.insert(
                meta.ino(),
                CgroupInfo {
                    attribution: attribute(&rel),
                    path: rel,
                },
            );
            if depth >= Self::MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back((entry.path(), depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    fn check(
        path: &str,
        pod: Option<&str>,
        id: Option<&str>,
        runtime: Option<&str>,
        qos: Option<&str>,
    ) {
        let a = attribute(path);
        assert_eq!(a.pod_uid.as_deref(), pod, "pod_uid of {path}");
        assert_eq!(a.container_id.as_deref(), id, "container_id of {path}");
        assert_eq!(a.runtime, runtime, "runtime of {path}");
        assert_eq!(a.qos, qos, "qos of {path}");
    }

    #[test]
    fn kubelet_systemd_driver_containerd() {
        let uid_ = UID.replace('-', "_");
        check(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            Some(UID),
            Some(ID),
            Some("containerd"),
            Some("burstable"),
        );
        // Guaranteed pods sit directly under kubepods.slice.
        check(
            &format!("kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
            Some(UID),
            Some(ID),
            Some("containerd"),
            Some("guaranteed"),
        );
        // The pod's own cgroup (no container yet) still names the pod.
        check(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
            ),
            Some(UID),
            None,
            None,
            Some("besteffort"),
        );
    }

    #[test]
    fn kubelet_systemd_driver_crio() {
        let uid_ = UID.replace('-', "_");
        check(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
            ),
            Some(UID),
            Some(ID),
            Some("cri-o"),
            Some("besteffort"),
        );
        check(
            &format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"),
            Some(UID),
            Some(ID),
            Some("cri-o"),
            Some("guaranteed"),
        );
    }

    #[test]
    fn kubelet_cgroupfs_driver_v1_and_v2() {
        check(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(UID),
            Some(ID),
            None,
            Some("burstable"),
        );
        check(
            &format!("/kubepods/pod{UID}/{ID}"),
            Some(UID),
            Some(ID),
            None,
            Some("guaranteed"),
        );
        // v1 controller prefix and kubelet nested in a kind node's cgroup.
        check(
            &format!(
                "memory/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            Some(UID),
            Some(ID),
            Some("containerd"),
            Some("besteffort"),
        );
    }

    #[test]
    fn docker_and_podman_without_kubernetes() {
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            None,
            Some(ID),
            Some("docker"),
            None,
        );
        check(
            &format!("/docker/{ID}"),
            None,
            Some(ID),
            Some("docker"),
            None,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            None,
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/system.slice/cri-containerd-{}.scope", &ID[..12]),
            None,
            Some(&ID[..12]),
            Some("containerd"),
            None,
        );
    }

    #[test]
    fn systemd_units_and_plain_paths() {
        let a = attribute("/system.slice/ssh.service");
        assert_eq!(a.systemd_unit.as_deref(), Some("ssh.service"));
        assert_eq!(a.labels(), Vec::<(&str, String)>::new());
        let a = attribute("user.slice/user-1000.slice/session-3.scope");
        assert_eq!(a.systemd_unit.as_deref(), Some("session-3.scope"));
        assert_eq!(a.container_id, None);
        check("", None, None, None, None);
        check("/", None, None, None, None);
        // A hex-looking directory outside any runtime's layout is not a container.
        check(&format!("/mygroup/{ID}"), None, None, None, None);
        // A malformed pod UID is not a pod.
        check(
            "/kubepods/burstable/podnot-a-uid/abc",
            None,
            None,
            None,
            None,
        );
    }

    #[test]
    fn labels_are_sorted_by_key() {
        let uid_ = UID.replace('-', "_");
        let a = attribute(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ));
        let keys: Vec<&str> = a.labels().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["container_id", "pod_uid", "qos", "runtime"]);
    }

    #[test]
    fn v1_proc_cgroup_prefers_memory() {
        let text = format!(
            "12:pids:/kubepods/pod{UID}/{ID}\n11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/system.slice/x.service\n0::/\n"
        );
        assert_eq!(
            pick_v1_path(&text),
            Some(format!("/kubepods/burstable/pod{UID}/{ID}").as_str())
        );
        assert_eq!(pick_v1_path("0::/\n1:name=systemd:/\n"), None);
        assert_eq!(pick_v1_path("0::/user.slice\n"), Some("/user.slice"));
        assert_eq!(pick_v1_path("garbage\n"), None);
    }

    #[test]
    fn resolves_ids_in_a_tree() {
        let tmp = std::env::temp_dir().join(format!("scarlet-cgpaths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let leaf = tmp.join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(tmp.join("cgroup.controllers"), "cpu\n").unwrap();
        let mut paths = CgroupPaths::new(&tmp);
        assert!(paths.has_v2());
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        let now = Instant::now();
        let info = paths.resolve(ino, now).expect("leaf resolves").clone();
        assert_eq!(info.path, format!("system.slice/docker-{ID}.scope"));
        assert_eq!(info.attribution.runtime, Some("docker"));
        let root_ino = std::fs::metadata(&tmp).unwrap().ino();
        assert_eq!(paths.resolve(root_ino, now).unwrap().path, "");
        // An unknown id does not walk again before RESCAN_MIN.
        assert!(paths.resolve(u64::MAX, now).is_none());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
