//! How a component (a node of the service graph, a suspect of RCA) is named.
//!
//! One rule everywhere (TCP rows, samples, anomalies, process events), so the graph, the
//! incidents and the RCA ranking talk about the same things:
//!
//! - a pod when the pod uid is known (`pod:<uid>`), from the row's `pod_uid` or from a
//!   kubepods cgroup path;
//! - else a container when its id is known (`container:<first 12 hex digits>`), from the
//!   row's `container_id` or a docker/containerd/crio cgroup path;
//! - else the process name on its node: `<comm>@<node>` (services in the test harness set
//!   their comm to the service name, so `payments@node-2`);
//! - a whole host: `host@<node>` (host-wide metrics);
//! - a peer nobody on our nodes owns: `ext:<addr>:<port>`.

/// Name of the component for a process (or a TCP row) on `node`.
pub fn component(
    node: &str,
    comm: Option<&str>,
    cgroup: Option<&str>,
    pod_uid: Option<&str>,
    container_id: Option<&str>,
) -> String {
    if let Some(uid) = nonempty(pod_uid) {
        return format!("pod:{uid}");
    }
    if let Some(uid) = cgroup.and_then(pod_uid_from_cgroup) {
        return format!("pod:{uid}");
    }
    if let Some(id) = nonempty(container_id) {
        return format!("container:{}", short_id(id));
    }
    if let Some(id) = cgroup.and_then(container_from_cgroup) {
        return format!("container:{}", short_id(&id));
    }
    match nonempty(comm) {
        Some(comm) => format!("{comm}@{node}"),
        None => format!("host@{node}"),
    }
}

/// The component of a sample or anomaly series: `entity` plus its `labels` text
/// (`comm=x,cgroup=y`).
pub fn component_of_series(node: &str, entity: &str, labels: &str) -> String {
    if entity.starts_with("process/") {
        let comm = label(labels, "comm");
        let cgroup = label(labels, "cgroup");
        return component(node, comm, cgroup, None, None);
    }
    if let Some(path) = entity.strip_prefix("cgroup/") {
        if let Some(uid) = pod_uid_from_cgroup(path) {
            return format!("pod:{uid}");
        }
        if let Some(id) = container_from_cgroup(path) {
            return format!("container:{}", short_id(&id));
        }
    }
    // Log sources (the agent's `log/pod/<uid>/<container>`, `log/container/<id>`,
    // `log/file/<path>`): the pod or container the path names, else the process that
    // writes the file when the agent found it (`comm=`, `cgroup=` labels).
    if let Some(rest) = entity.strip_prefix("log/") {
        if let Some(uid) = rest
            .strip_prefix("pod/")
            .and_then(|r| r.split('/').next())
            .filter(|u| !u.is_empty())
        {
            return format!("pod:{uid}");
        }
        if let Some(id) = rest.strip_prefix("container/").filter(|i| !i.is_empty()) {
            return format!("container:{}", short_id(id));
        }
        if let Some(comm) = label(labels, "comm") {
            return component(node, Some(comm), label(labels, "cgroup"), None, None);
        }
    }
    format!("host@{node}")
}

/// An external peer.
pub fn external(addr: &str, port: Option<i64>) -> String {
    match port {
        Some(p) => format!("ext:{addr}:{p}"),
        None => format!("ext:{addr}"),
    }
}

/// What kind of component a name is: `pod`, `container`, `process`, `host` or `external`.
pub fn kind_of(component: &str) -> &'static str {
    if component.starts_with("pod:") {
        "pod"
    } else if component.starts_with("container:") {
        "container"
    } else if component.starts_with("ext:") {
        "external"
    } else if component.starts_with("host@") {
        "host"
    } else {
        "process"
    }
}

/// The node a component lives on, when its name says (`<comm>@<node>`, `host@<node>`).
pub fn node_of(component: &str) -> Option<&str> {
    if component.starts_with("pod:")
        || component.starts_with("container:")
        || component.starts_with("ext:")
    {
        return None;
    }
    component.rsplit_once('@').map(|(_, n)| n)
}

/// The value of `key` in a `k=v,k2=v2` labels text.
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn short_id(id: &str) -> &str {
    let id = id.rsplit("://").next().unwrap_or(id);
    id.get(..12).unwrap_or(id)
}

/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/...` or
/// `kubepods/burstable/pod1234-5678/<container>` → `1234-5678`.
pub fn pod_uid_from_cgroup(path: &str) -> Option<String> {
    for part in path.split('/') {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        let Some(idx) = part.rfind("pod") else {
            continue;
        };
        if !part.starts_with("kubepods") && !path.contains("kubepods") {
            continue;
        }
        let uid = &part[idx + 3..];
        if uid.len() >= 8
            && uid
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '_' || c == '-')
        {
            return Some(uid.replace('_', "-"));
        }
    }
    None
}

/// `docker-<64 hex>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope` or a bare
/// 64-hex directory → the id.
pub fn container_from_cgroup(path: &str) -> Option<String> {
    let last = path.rsplit('/').next()?;
    let last = last.strip_suffix(".scope").unwrap_or(last);
    let id = last
        .strip_prefix("docker-")
        .or_else(|| last.strip_prefix("cri-containerd-"))
        .or_else(|| last.strip_prefix("crio-"))
        .or_else(|| last.strip_prefix("libpod-"))
        .unwrap_or(last);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pod_then_container_then_comm() {
        assert_eq!(
            component("n1", Some("payments"), None, None, None),
            "payments@n1"
        );
        assert_eq!(
            component(
                "n1",
                Some("payments"),
                None,
                Some("abc-123"),
                Some("c0ffee")
            ),
            "pod:abc-123"
        );
        assert_eq!(
            component(
                "n1",
                Some("x"),
                None,
                Some(""),
                Some("containerd://0123456789abcdef")
            ),
            "container:0123456789ab"
        );
        assert_eq!(component("n1", None, None, None, None), "host@n1");
        let cg = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12345678_aaaa_bbbb.slice/cri-containerd-x.scope";
        assert_eq!(
            component("n1", Some("java"), Some(cg), None, None),
            "pod:12345678-aaaa-bbbb"
        );
        let docker = format!("system.slice/docker-{}.scope", "a".repeat(64));
        assert_eq!(
            component_of_series("n1", "process/7", &format!("cgroup={docker},comm=nginx")),
            "container:aaaaaaaaaaaa"
        );
        assert_eq!(
            component_of_series("n2", "process/7", "cgroup=user.slice,comm=payments"),
            "payments@n2"
        );
        assert_eq!(component_of_series("n2", "host", ""), "host@n2");
        assert_eq!(
            component_of_series("n2", "log/pod/1234-5678/server", "container=server"),
            "pod:1234-5678"
        );
        assert_eq!(
            component_of_series("n2", &format!("log/container/{}", "b".repeat(64)), ""),
            "container:bbbbbbbbbbbb"
        );
        assert_eq!(
            component_of_series("n2", "log/file/var/log/app.log", "comm=payments"),
            "payments@n2"
        );
        assert_eq!(
            component_of_series("n2", "log/file/var/log/app.log", ""),
            "host@n2"
        );
        assert_eq!(kind_of("payments@n2"), "process");
        assert_eq!(node_of("payments@n2"), Some("n2"));
        assert_eq!(node_of("pod:1"), None);
        assert_eq!(kind_of(&external("10.0.0.9", Some(443))), "external");
    }
}
